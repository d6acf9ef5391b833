"""The privacy label of a bundle: a quick audit at training time, stored in the manifest.

``dropstream train`` attacks held-out windows of the new model with the attacks of
:data:`LABEL_ATTACKS` (the floor and every adaptive attack that needs no stream, the decoder on a
short budget) at the model's ``K`` and stores, under ``privacy.label`` in the manifest::

    {"floor_r": 0.25, "strongest_attack": "kernel", "strongest_r": 0.29, "excess_r": 0.04,
     "keep": 64, "windows": 200, "attacks": [...], "decoder_seconds": 20.0, "attacker": "..."}

``dropstream connect`` prints it when it starts
(:meth:`dropstream.local_encoder.bundle.DeviceBundle.privacy_line`) and ``dropstream audit``
compares its full result with it (:func:`compare`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dropstream.inference.audit.report import AuditResult, Recording, run_audit
from dropstream.local_encoder.bundle import DeviceBundle

#: Attacks of the quick audit (the joint attack needs whole streams; naive and ridge are
#: dominated by the prior attack).
LABEL_ATTACKS = ("label", "prior", "kernel", "subspace", "decoder")


def windows_recording(
    name: str, windows: np.ndarray, labels: Sequence[str] | None, hop: int
) -> Recording:
    """A :class:`Recording` of prepared windows ``(N, C, T)`` (one stream per window)."""
    w = np.asarray(windows, np.float32)
    return Recording(
        name,
        list(w),
        "trials",
        w.shape[-1],
        max(int(hop), w.shape[-1]),
        False,
        None if labels is None else [str(v) for v in labels],
    )


def privacy_label(
    bundle: DeviceBundle,
    held_out: Sequence[Recording],
    attacker: Sequence[Recording],
    *,
    attacker_note: str,
    decoder_seconds: float = 20.0,
    max_windows: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the quick audit at the bundle's ``K`` and return the label (JSON-ready).

    ``decoder_seconds <= 0`` leaves the learned decoder out.
    """
    attacks = tuple(a for a in LABEL_ATTACKS if a != "decoder" or decoder_seconds > 0)
    result = run_audit(
        bundle,
        held_out,
        attacker,
        [bundle.keep],
        attacks,
        decoder_seconds=decoder_seconds,
        max_windows=max_windows,
        seed=seed,
    )
    s = result.summary()[0]
    n = int(next(r["n_windows"] for r in result.rows))
    return {
        "floor_r": round(s["floor_r"], 4),
        "strongest_attack": s["strongest_attack"],
        "strongest_r": round(s["strongest_r"], 4),
        "excess_r": round(s["excess_r"], 4),
        "keep": int(bundle.keep),
        "windows": n,
        "attacks": list(attacks),
        "decoder_seconds": float(decoder_seconds),
        "attacker": attacker_note,
    }


def compare(label: dict[str, Any] | None, result: AuditResult, keep: int) -> list[str]:
    """Lines comparing a full audit at ``keep`` with the bundle's stored label."""
    if not label:
        return ["the bundle carries no privacy label (written before labels existed)"]
    s = next((x for x in result.summary() if x["keep"] == keep), None)
    if s is None:
        return [f"the audit did not run at the label's K={keep}; add it to --keep to compare"]
    lines = [
        f"label (quick audit at training, {label.get('windows', '?')} windows): strongest "
        f"{label['strongest_attack']} r={label['strongest_r']:.3f}, floor r={label['floor_r']:.3f}",
        f"this audit at K={keep}: strongest {s['strongest_attack']} r={s['strongest_r']:.3f}, "
        f"floor r={s['floor_r']:.3f}, excess {s['excess_r']:+.3f}",
    ]
    diff = s["strongest_r"] - float(label["strongest_r"])
    verdict = (
        "consistent with the label"
        if abs(diff) <= 0.05
        else "MORE leak than the label claims"
        if diff > 0
        else "less leak than the label (the quick audit was the stronger attacker)"
    )
    lines.append(f"difference {diff:+.3f}: {verdict}")
    return lines
