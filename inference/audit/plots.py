"""Figures of the audit: original against reconstructed traces, and the privacy curve."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dropstream.inference.audit.report import AuditResult

#: Line colour of each attack (the original is black).
COLOURS = {
    "label": "tab:olive",
    "naive": "tab:gray",
    "ridge": "tab:blue",
    "prior": "tab:green",
    "joint": "tab:purple",
    "kernel": "tab:orange",
    "subspace": "tab:brown",
    "decoder": "tab:red",
}


def plot_traces(
    result: AuditResult,
    sfreq: float,
    path: str | Path,
    channel: int = 0,
    title: str = "",
) -> None:
    """One panel per ``K``: a held-out window's channel and every attack's reconstruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keeps = sorted(result.examples, reverse=True)
    fig, axes = plt.subplots(len(keeps), 1, figsize=(9, 2.2 * len(keeps)), squeeze=False)
    for ax, k in zip(axes[:, 0], keeps, strict=True):
        ex = result.examples[k]
        orig = ex["original"][channel]
        t = np.arange(orig.size) / sfreq
        ax.plot(t, orig, color="black", lw=1.6, label="original")
        for name, rec in ex.items():
            if name == "original":
                continue
            rs = [row["r_mean"] for row in result.rows if (row["keep"], row["attack"]) == (k, name)]
            r = rs[0] if rs else float("nan")
            ax.plot(t, rec[channel], color=COLOURS.get(name), lw=0.9, label=f"{name} (r={r:.2f})")
        ax.set_ylabel(f"K={k}")
        ax.legend(fontsize=7, ncol=3, loc="upper right")
        summary = next((s for s in result.summary() if s["keep"] == k), None)
        if summary is not None:
            ax.set_title(
                f"K={k}: strongest {summary['strongest_attack']} r={summary['strongest_r']:.2f}, "
                f"floor (label) r={summary['floor_r']:.2f}, excess {summary['excess_r']:+.2f}",
                fontsize=8,
            )
    axes[-1, 0].set_xlabel("time in window (s)")
    fig.suptitle(title or f"channel {channel}: original vs reconstructed (normalised units)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_privacy_utility(
    ax: Any,
    rows: Sequence[Mapping[str, Any]],
    accuracy: Mapping[float, float] | None = None,
    goal: float = 0.3,
) -> None:
    """Mean ``r`` of each attack against the keep fraction, with accuracy on a twin axis."""
    attacks = sorted({r["attack"] for r in rows}, key=list(COLOURS).index)
    for name in attacks:
        pts = sorted((r["keep_fraction"], r["r_mean"]) for r in rows if r["attack"] == name)
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, "o-", color=COLOURS.get(name), label=name)
    ax.axhline(goal, color="black", ls=":", lw=1, label=f"goal r <= {goal}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("keep fraction K/m")
    ax.set_ylabel("Pearson r (held-out)")
    ax.set_ylim(-0.05, 1.05)
    if accuracy:
        ax2 = ax.twinx()
        xs, ys = zip(*sorted(accuracy.items()), strict=True)
        ax2.plot(xs, ys, "s--", color="tab:orange", label="test accuracy")
        ax2.set_ylabel("test accuracy", color="tab:orange")
        ax2.set_ylim(0.4, 1.0)
        ax2.legend(fontsize=7, loc="lower right")
    ax.legend(fontsize=7, loc="upper left")
