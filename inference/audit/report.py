"""Running a privacy audit: load recordings as the device sees them, attack, score, tabulate.

The audit evaluates every attack on *held-out* windows. The attacker's own data (for the learned
decoder and the Gaussian prior) is either given explicitly (other recordings) or, when it is not,
taken from the evaluated files without overlap: the first half of the trials of a trial file
(``.ts``), or the first half (in time) of a continuous recording, whose second half is then
attacked. The table says which.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dropstream.errors import DropstreamError
from dropstream.inference.audit.attacks import (
    GaussianPrior,
    KernelAttack,
    Messages,
    WindowAttack,
    joint_attack,
    label_attack,
    naive_attack,
    observe,
)
from dropstream.inference.audit.metrics import BANDS, score
from dropstream.inference.audit.subspace import MAX_RANK as MAX_SUBSPACE_RANK
from dropstream.inference.audit.subspace import SubspaceAttack
from dropstream.local_encoder.bundle import DeviceBundle
from dropstream.local_encoder.first_layer import FirstLayer
from dropstream.local_encoder.framing import stream_windows
from dropstream.local_encoder.preprocessing import (
    complete_preprocessing,
    filter_signal,
    filter_windows,
    normalise,
)
from dropstream.local_encoder.resampling import decimate_signal

log = logging.getLogger(__name__)

#: Every attack the audit can run, in table order. ``label`` is the task floor (the class-mean
#: window, what the task's answer alone reveals); it is reported beside the others but never
#: counts as the strongest attack.
ALL_ATTACKS = ("label", "naive", "ridge", "prior", "kernel", "subspace", "joint", "decoder")
FLOOR = "label"


class AuditError(DropstreamError):
    """Recordings or settings the audit cannot use."""


def cut_windows(stream: np.ndarray, window: int, hop: int, demean: bool) -> np.ndarray:
    """Windows ``(N, C, T)`` float32 of a stream ``(C, L)`` as the first layer sees them.

    Cut at the device's framing (:func:`~dropstream.local_encoder.framing.stream_windows`) and,
    when the model asks for it, demeaned per window and channel.
    """
    w = stream_windows(stream, window, hop)
    if demean and len(w):
        w = w - w.mean(axis=-1, keepdims=True)
    return w.astype(np.float32)


@dataclass
class Recording:
    """The first-layer inputs of one data file, as the device would compute them.

    Attributes
    ----------
    name : str
        File name.
    streams : list of numpy.ndarray, each (C, L)
        Normalised continuous signals (one per trial for a trial file). Windows of a stream
        are cut at the bundle's hop; overlapping windows share samples.
    kind : str
        ``"continuous"`` or ``"trials"``.
    labels : list of str or None
        One task label per stream (a trial file's classes), or ``None`` when unknown.
    """

    name: str
    streams: list[np.ndarray]
    kind: str
    window: int
    hop: int
    demean: bool = False
    labels: list[str] | None = None

    def windows(self) -> np.ndarray:
        """All windows ``(N, C, T)`` of all streams, as the first layer sees them."""
        out = [self.cut(s) for s in self.streams]
        out = [w for w in out if len(w)]
        if not out:
            c = self.streams[0].shape[0] if self.streams else 0
            return np.zeros((0, c, self.window), np.float32)
        return np.concatenate(out)

    def window_labels(self) -> np.ndarray | None:
        """The label of every window of :meth:`windows` (its stream's), or ``None``."""
        if self.labels is None:
            return None
        counts = [len(self.cut(s)) for s in self.streams]
        return np.repeat(np.asarray(self.labels, dtype=str), counts)

    def cut(self, stream: np.ndarray) -> np.ndarray:
        """Windows of one stream, demeaned per window when the model asks for it."""
        return cut_windows(stream, self.window, self.hop, self.demean)

    def split(self) -> tuple[Recording, Recording]:
        """``(attacker_part, held_out_part)``: first half of trials, or of time."""
        labels: tuple = (None, None)
        if len(self.streams) >= 2:
            h = len(self.streams) // 2
            parts = (self.streams[:h], self.streams[h:])
            if self.labels is not None:
                labels = (self.labels[:h], self.labels[h:])
        else:
            s = self.streams[0]
            h = s.shape[1] // 2
            parts = ([s[:, :h]], [s[:, h:]])
            if self.labels is not None:
                labels = (self.labels, self.labels)
        return tuple(  # type: ignore[return-value]
            Recording(self.name, list(p), self.kind, self.window, self.hop, self.demean, lab)
            for p, lab in zip(parts, labels, strict=True)
        )


def load_recording(path: str | Path, bundle: DeviceBundle) -> Recording:
    """Read a recording (anything :func:`mne.io.read_raw` opens, or a UEA ``.ts`` trial file).

    The signal goes through the bundle's causal filter and normalisation (what the device
    computes); channels are taken in the model's order. A ``.ts`` file carries no channel names
    or rate: its channel count must match and its rate is assumed to be the model's.

    Raises
    ------
    AuditError
        If the file is missing or unreadable, or does not fit the model.
    """
    path = Path(path)
    if not path.exists():
        raise AuditError(f"recording {path} does not exist")
    pre = complete_preprocessing(bundle.preprocessing)
    c, t = bundle.n_channels, bundle.window_samples
    if path.suffix.lower() == ".ts":
        from dropstream.inference.datasets import load_ts

        x, y, _ = load_ts(path)
        if x.shape[1] != c or x.shape[2] < t:
            raise AuditError(
                f"{path}: trials of {x.shape[1]} channels x {x.shape[2]} samples do not fit "
                f"model {bundle.model_id} ({c} channels x {t} samples per window)"
            )
        filt = filter_windows(x, bundle.sfreq, pre)
        streams = [normalise(f, bundle.norm_mean, bundle.norm_std) for f in filt]
        return Recording(
            path.name,
            streams,
            "trials",
            t,
            bundle.hop_samples,
            pre["window_demean"],
            [str(v) for v in y],
        )
    from dropstream.acquisition.recording import load_tracks

    try:
        track = load_tracks(path)[0]  # voltages in microvolts, exactly as replay publishes
    except DropstreamError as exc:
        raise AuditError(f"cannot read recording {path}: {exc}") from exc
    picks, factor = bundle.stream_plan(track.info.channel_names, track.info.sfreq)
    data = track.data.T[picks]
    if factor > 1:  # the device decimates a faster stream to the model rate first
        data = decimate_signal(data, track.info.sfreq, factor)
    if data.shape[1] < t:
        raise AuditError(f"{path} is shorter than one window of {t} samples")
    stream = normalise(filter_signal(data, bundle.sfreq, pre), bundle.norm_mean, bundle.norm_std)
    return Recording(path.name, [stream], "continuous", t, bundle.hop_samples, pre["window_demean"])


@dataclass
class AuditResult:
    """Rows of the audit table and one example window per setting for the figure."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    examples: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def strongest(self, keep: int) -> dict[str, Any]:
        """Row of the reconstruction attack (not the floor) with the highest mean ``r``."""
        rows = [r for r in self.rows if r["keep"] == keep]
        attacks = [r for r in rows if r["attack"] != FLOOR] or rows
        return max(attacks, key=lambda r: r["r_mean"])

    def floor(self, keep: int) -> float:
        """Mean ``r`` of the ``label`` floor at ``keep`` (NaN when it was not run)."""
        rows = [r for r in self.rows if r["keep"] == keep and r["attack"] == FLOOR]
        return float(rows[0]["r_mean"]) if rows else float("nan")

    def summary(self) -> list[dict[str, Any]]:
        """Per ``K``: floor r, the strongest attack and its r, and the excess leak (r - floor)."""
        out = []
        for k in dict.fromkeys(r["keep"] for r in self.rows):
            best = self.strongest(k)
            floor = self.floor(k)
            out.append(
                {
                    "keep": k,
                    "floor_r": floor,
                    "strongest_attack": best["attack"],
                    "strongest_r": float(best["r_mean"]),
                    "excess_r": float(best["r_mean"]) - floor,
                }
            )
        return out


def effective_layer(layer: FirstLayer, n_channels: int, demean: bool) -> FirstLayer:
    """The layer as a map of the *undemeaned* normalised slice (for the joint attack).

    Per-window demeaning is linear, ``x_w = s_w (I - 11'/T)`` per channel, so it folds into the
    weights: each channel block of each row loses its mean.
    """
    if not demean:
        return layer
    rows = layer.dense_input_map.shape[0]  # demean the input map; a low-rank factor stays
    w = layer.dense_input_map.reshape(rows, n_channels, -1)
    w = w - w.mean(axis=-1, keepdims=True)
    dense = w.reshape(rows, -1).astype(np.float32)
    return replace(layer, weight=dense, pool=1, n_samples=0)


def run_audit(
    bundle: DeviceBundle,
    held_out: Sequence[Recording],
    attacker: Sequence[Recording],
    keeps: Sequence[int],
    attacks: Sequence[str] = ALL_ATTACKS,
    *,
    value_dtype: str = "float16",
    decoder_seconds: float = 60.0,
    decoder_epochs: int = 200,
    max_windows: int = 300,
    joint_max_samples: int = 4096,
    seed: int = 0,
) -> AuditResult:
    """Attack the held-out recordings at each ``K`` with each attack and score them.

    Parameters
    ----------
    bundle : DeviceBundle
        The model under audit (layer, preprocessing, window, hop).
    held_out : sequence of Recording
        What is attacked; never seen by the decoder or the prior.
    attacker : sequence of Recording
        The attacker's own data (decoder training, prior estimate).
    keeps : sequence of int
        ``K`` values to audit (``m`` = no dropping).
    attacks : sequence of str
        Subset of :data:`ALL_ATTACKS`.
    value_dtype : str
        Wire dtype of the activation values.
    decoder_seconds, decoder_epochs : float, int
        Training budget of each learned decoder (one per ``K``).
    max_windows : int
        At most this many held-out windows are attacked (a seeded random subset).
    joint_max_samples : int
        The joint attack reconstructs at most this many samples of each held-out stream.
    seed : int
    """
    unknown = set(attacks) - set(ALL_ATTACKS)
    if unknown:
        raise AuditError(f"unknown attacks {sorted(unknown)}; choose from {ALL_ATTACKS}")
    layer = bundle.layer
    c, t = bundle.n_channels, bundle.window_samples
    for k in keeps:
        if not 1 <= k <= layer.width:
            raise AuditError(f"keep K={k} must be between 1 and the layer width m={layer.width}")
    rng = np.random.default_rng(seed)
    x_eval = np.concatenate([r.windows() for r in held_out]) if held_out else None
    x_att = np.concatenate([r.windows() for r in attacker]) if attacker else None
    if x_eval is None or not len(x_eval):
        raise AuditError("no held-out windows to attack: recordings shorter than one window")
    novelty = bundle.head_config.get("type") == "novelty"
    y_eval = None if novelty else _labels(held_out)
    y_att = None if novelty else _labels(attacker)
    if len(x_eval) > max_windows:
        pick = np.sort(rng.choice(len(x_eval), max_windows, replace=False))
        x_eval = x_eval[pick]
        y_eval = None if y_eval is None else y_eval[pick]
    needs_data = {"label", "prior", "kernel", "subspace", "decoder"} & set(attacks)
    if needs_data and (x_att is None or len(x_att) < 2):
        raise AuditError(
            f"attacks {sorted(needs_data)} need attacker training windows; give other recordings"
        )
    result = AuditResult()
    result.notes.append(
        f"{len(x_eval)} held-out windows of {c} ch x {t} samples (C*T={c * t}), "
        f"m={layer.width}, activation={layer.activation}, wire dtype {value_dtype}; "
        f"attacker data: {0 if x_att is None else len(x_att)} windows; "
        f"defences: noise={layer.noise:g}, rank(W)={np.linalg.matrix_rank(layer.dense_weight)}"
    )
    if "label" in attacks:
        result.notes.append(
            "label (floor): "
            + (
                "mean normal window (novelty model)"
                if novelty
                else "class-mean window of the attacker's data"
                if y_eval is not None and y_att is not None
                else "mean attacker window (no labels)"
            )
        )
    white = WindowAttack(layer, GaussianPrior.identity(c, t)) if "ridge" in attacks else None
    prior = None
    if "prior" in attacks:
        prior = WindowAttack(layer, GaussianPrior.fit(x_att))
    overlapping = bundle.hop_samples < t
    joint_streams = [s for r in held_out for s in r.streams if s.shape[1] >= t]
    if "joint" in attacks and not overlapping:
        result.notes.append(
            "joint: windows do not overlap (hop >= window), so joint reconstruction equals the "
            "per-window ridge attack; not run"
        )
    demean = bool(complete_preprocessing(bundle.preprocessing)["window_demean"])
    for k in keeps:
        msgs = observe(layer, x_eval, k, rng, value_dtype)
        recs: dict[str, np.ndarray] = {}
        secs: dict[str, float] = {}
        solvers: list[tuple[str, Any]] = []
        if "label" in attacks:
            solvers.append(("label", lambda m: label_attack(x_att, y_att, y_eval, len(m))))
        if "naive" in attacks:
            solvers.append(("naive", lambda m: naive_attack(layer, m, c)))
        if white is not None:
            solvers.append(("ridge", lambda m: white.reconstruct(m, c)))
        if prior is not None:
            solvers.append(("prior", lambda m: prior.reconstruct(m, c)))
        # the learned attacks are fitted inside their timed solver (the time is the attack's)
        for cls in (KernelAttack, SubspaceAttack):
            if cls.NAME not in attacks or not cls.applies(layer, k):
                continue

            def fit_and_solve(m: Messages, a: Any = cls, k: int = k) -> np.ndarray:
                return a(layer, x_att, k, rng, value_dtype).reconstruct(m)

            solvers.append((cls.NAME, fit_and_solve))
        if "subspace" in attacks and k == keeps[0] and "subspace" not in dict(solvers):
            result.notes.append(
                f"subspace: the layer's rank is above {MAX_SUBSPACE_RANK} or K/2; not run"
            )
        for name, solve in solvers:
            t0 = time.perf_counter()
            recs[name] = solve(msgs)
            secs[name] = time.perf_counter() - t0
        if "decoder" in attacks:
            from dropstream.inference.audit.decoder import train_decoder

            t0 = time.perf_counter()
            dec = train_decoder(
                layer,
                x_att,
                k,
                value_dtype=value_dtype,
                epochs=decoder_epochs,
                max_seconds=decoder_seconds,
                seed=seed,
            )
            recs["decoder"] = dec.reconstruct(msgs)
            secs["decoder"] = time.perf_counter() - t0
            log.info("decoder K=%d: %d epochs in %.0f s", k, dec.epochs, dec.train_seconds)
        for name, rec in recs.items():
            result.rows.append(_row(name, k, layer.width, x_eval, rec, bundle.sfreq, secs[name]))
        result.examples[k] = {"original": x_eval[0], **{n: r[0] for n, r in recs.items()}}
        if "joint" in attacks and overlapping and joint_streams:
            result.rows.append(
                _joint_row(bundle, joint_streams, k, joint_max_samples, demean, rng, value_dtype)
            )
    return result


def _labels(recordings: Sequence[Recording]) -> np.ndarray | None:
    """Labels of all windows of ``recordings`` (``None`` unless every one is labelled)."""
    labels = [r.window_labels() for r in recordings]
    if not labels or any(lab is None for lab in labels):
        return None
    return np.concatenate(labels)


def _row(
    attack: str,
    keep: int,
    width: int,
    x: np.ndarray,
    rec: np.ndarray,
    sfreq: float,
    seconds: float,
) -> dict[str, Any]:
    s = score(x, rec, sfreq)
    row: dict[str, Any] = {"attack": attack, "keep": keep, "keep_fraction": keep / width}
    row.update(s.as_row())
    row["seconds"] = seconds
    return row


def _joint_row(
    bundle: DeviceBundle,
    streams: Sequence[np.ndarray],
    keep: int,
    max_samples: int,
    demean: bool,
    rng: np.random.Generator,
    value_dtype: str,
) -> dict[str, Any]:
    c, t, hop = bundle.n_channels, bundle.window_samples, bundle.hop_samples
    eff = effective_layer(bundle.layer, c, demean)
    originals, recons = [], []
    t0 = time.perf_counter()
    for s in streams:
        n_win = max(1, (min(s.shape[1], max_samples) - t) // hop + 1)
        s = s[:, : t + (n_win - 1) * hop]
        wins = cut_windows(s, t, hop, demean)
        # the device computes f(W x_w + b) on demeaned windows; the joint solver works on the
        # undemeaned slices, with the demeaning folded into the weights (same z)
        msgs = observe(bundle.layer, wins, keep, rng, value_dtype)
        rec = joint_attack(eff, msgs, c, s.shape[1], hop)
        originals.append(wins)
        recons.append(cut_windows(rec, t, hop, demean))
    row = _row(
        "joint",
        keep,
        bundle.layer.width,
        np.concatenate(originals),
        np.concatenate(recons),
        bundle.sfreq,
        time.perf_counter() - t0,
    )
    return row


def format_table(result: AuditResult) -> str:
    """The audit table in Markdown (one row per K and attack).

    Columns: ``r`` over the whole window (mean, median), SNR in dB, ``r`` of the band-limited
    signals (slow = 0-1 Hz, then delta..gamma) and the median relative band-power errors.
    """
    bands = [b[0] for b in BANDS]
    r_bands = ["slow", *bands]

    def fmt(v: float) -> str:
        return "n/a" if not np.isfinite(v) else f"{v:.2f}"

    head = (
        "| K | K/m | attack | r mean | r median | SNR dB | "
        + " | ".join(f"r {b}" for b in r_bands)
        + " | "
        + " | ".join(f"{b} err" for b in bands)
        + " | windows | s |"
    )
    sep = "|" + "---|" * (head.count("|") - 1)
    lines = [head, sep]
    for r in result.rows:
        rs = " | ".join(fmt(r.get(f"r_{b}", float("nan"))) for b in r_bands)
        errs = " | ".join(fmt(r[f"err_{b}"]) for b in bands)
        lines.append(
            f"| {r['keep']} | {r['keep_fraction']:.3f} | {r['attack']} | {r['r_mean']:.3f} | "
            f"{r['r_median']:.3f} | {r['snr_db']:.1f} | {rs} | {errs} | {int(r['n_windows'])} | "
            f"{r['seconds']:.1f} |"
        )
    lines += ["", "| K | floor r (label) | strongest attack | its r | excess leak (r - floor) |"]
    lines.append("|---|---|---|---|---|")
    for s in result.summary():
        lines.append(
            f"| {s['keep']} | {s['floor_r']:.3f} | {s['strongest_attack']} | "
            f"{s['strongest_r']:.3f} | {s['excess_r']:+.3f} |"
        )
    return "\n".join(lines)
