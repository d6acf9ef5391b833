"""The energy novelty head: how far a window's kept activations' energies are from normal.

A novelty bundle's first layer (:func:`dropstream.inference.training.train_novelty`) projects
the **whitened** window onto random directions. Since the multi-scale layer (head
``energy_groups`` set) its units come in **groups**: one group looks at the whole window, one
group at each quarter of it (each part whitened with the covariance of that part on normal
windows), so a short artefact, or a stretch where the signal vanishes, stands out in its
quarter instead of being averaged over the window. Each unit carries an **offset** (the layer's
bias, a few standard deviations of its input), so the relu hardly ever clips a normal window and
``v_i - offset_i`` is the projection itself: the server's energy estimate is not thrown away on
the half of the units a bare relu zeroes.

For a random direction ``g`` the mean of ``(g.u)^2`` estimates ``|u|^2``, so per group the mean
over its kept units of ``(v_i - offset_i)^2 / E_normal[(v_i - offset_i)^2]`` estimates the
part's squared Mahalanobis norm relative to normal windows, from whichever units the device
kept. An artefact puts energy where normal signal has little (EMG on an ECG, a movement on EEG)
or removes the usual energy (a flat or detached sensor), and both move the log-energy away from
normal.

The score is the sum over groups of the squared z-score of the group's log-energy. Its spread
on normal windows depends on how many of the group's units were kept (few kept units: a noisier
estimate), so centre and variance are fitted as ``a + b / n`` in the kept count ``n``
(:meth:`EnergyScorer.fit`). A group without a kept unit adds nothing. It needs no training by
gradient descent (seconds on a CPU) and works for any kept set.

The quarters also say *where* in the window the anomaly is
(:meth:`EnergyScorer.scores_and_spans`): alerts start at the first quarter over
:data:`LOCATE_Z2` of their first window and end at the last one of their last window, instead of
covering whole 1-s windows that only touch the artefact.

Bundles made before the multi-scale layer (no ``energy_groups`` in their head config) have one
group, no offset and one centre and scale: they load and score as they did.
"""

from __future__ import annotations

import torch
from torch import nn

#: A time part (quarter) of the window is located as anomalous when its squared z-score reaches
#: this (|z| >= 2); chosen on the dev tasks (benchmarks/anomaly_dev.py), not the benchmark's.
LOCATE_Z2 = 4.0


class EnergyScorer(nn.Module):
    """Novelty score of dense activations ``(N, m)`` (NaN at dropped units) from their energy.

    Parameters
    ----------
    width : int
        First-layer units ``m``.
    keep : int
        Units kept per window ``K``.
    groups : int or None
        Unit groups (scales) ``G``; ``None``: the single-group head of bundles made before.

    Buffers (set by :meth:`fit` or training, stored in the bundle's head state): ``unit_power``
    (``E[(a_i - offset_i)^2]`` on normal windows, ``(m,)``); with ``groups``: ``offset``
    ``(m,)``, ``unit_group`` ``(m,)`` and ``center`` / ``variance`` ``(G, 2)`` (coefficients of
    ``1`` and ``1 / n``); without: ``center`` and ``scale`` (scalars).
    """

    def __init__(self, width: int, keep: int, groups: int | None = None) -> None:
        super().__init__()
        self._width, self._keep = int(width), int(keep)
        self._groups = None if groups is None else int(groups)
        self.register_buffer("unit_power", torch.ones(int(width)))
        if self._groups is None:
            self.register_buffer("center", torch.zeros(()))
            self.register_buffer("scale", torch.ones(()))
        else:
            self.register_buffer("offset", torch.zeros(int(width)))
            self.register_buffer("unit_group", torch.zeros(int(width), dtype=torch.long))
            self.register_buffer("center", torch.zeros(self._groups, 2))
            self.register_buffer("variance", torch.ones(self._groups, 2) * torch.tensor([1, 0]))

    @property
    def width(self) -> int:
        """First-layer width ``m``."""
        return self._width

    @property
    def keep(self) -> int:
        """Units kept per window ``K``."""
        return self._keep

    @property
    def groups(self) -> int | None:
        """Unit groups ``G`` (``None``: a single-group head of a bundle made before)."""
        return self._groups

    def _ratios(self, dense: torch.Tensor, mask: torch.Tensor | None) -> tuple:
        if mask is None:
            # the service's per-batch case: NaN marks exactly the dropped units, so zeroing the
            # NaNs after the offset is the masking (torch.where cost ~5x more on a CPU)
            kept = ~torch.isnan(dense)
            if self._groups is None:
                v = torch.nan_to_num(dense)
            else:
                v = (dense - self.offset).nan_to_num_()
            return v * v / self.unit_power, kept
        kept = mask.bool()
        v = torch.nan_to_num(dense)
        if self._groups is not None:
            v = v - self.offset
        v = torch.where(kept, v, torch.zeros_like(v))
        return v * v / self.unit_power, kept

    def log_energy(self, dense: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``log`` of the mean of ``(a_i - offset_i)^2 / unit_power_i`` over each window's kept
        units: ``(N,)`` (single group) or ``(N, G)`` with the kept counts ``(N, G)``."""
        ratio, kept = self._ratios(dense, mask)
        if self._groups is None:
            count = kept.sum(dim=1).clamp_min(1).to(ratio.dtype)
            return torch.log(ratio.sum(dim=1) / count + 1e-12)
        onehot = nn.functional.one_hot(self.unit_group, self._groups).to(ratio.dtype)
        count = kept.to(ratio.dtype) @ onehot
        return torch.log((ratio @ onehot) / count.clamp_min(1) + 1e-12), count

    def z2(self, e: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """Squared z-scores ``(N, G)`` of group log-energies ``(N, G)`` with kept counts
        ``(N, G)`` (0 where a group kept no unit)."""
        inv = 1.0 / count.clamp_min(1)
        center = self.center[:, 0] + self.center[:, 1] * inv
        var = (self.variance[:, 0] + self.variance[:, 1] * inv).clamp_min(1e-6)
        z2 = (e - center) ** 2 / var
        return torch.where(count > 0, z2, torch.zeros_like(z2))

    @torch.no_grad()
    def fit(self, acts: torch.Tensor, mask: torch.Tensor) -> None:
        """Fit ``center`` and ``variance`` on normal windows' activations ``(N, m)`` seen
        through keep masks ``(N, m)`` (:meth:`fit_energies` of their log-energies)."""
        self.fit_energies(*self.log_energy(acts, mask))

    @torch.no_grad()
    def fit_energies(self, e: torch.Tensor, count: torch.Tensor) -> None:
        """Fit ``center`` and ``variance`` (``a + b / n`` in the kept count ``n``, least squares)
        to group log-energies ``(N, G)`` of normal windows and their kept counts ``(N, G)``."""
        for g in range(self._groups or 0):
            ok = count[:, g] > 0
            x = torch.stack([torch.ones_like(e[ok, g]), 1.0 / count[ok, g]], dim=1)
            coef = torch.linalg.lstsq(x, e[ok, g, None]).solution[:, 0]
            dev = (e[ok, g] - x @ coef) ** 2
            var = torch.linalg.lstsq(x, dev[:, None]).solution[:, 0]
            if var[0] <= 0 or var[0] + var[1] / count[ok, g].max() <= 0:  # degenerate fit
                var = torch.stack([dev.mean(), torch.zeros_like(dev.mean())])
            self.center[g] = coef
            self.variance[g] = var

    def scores_and_spans(
        self, dense: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores ``(N,)`` and where each window's anomaly lies: ``(N, 2)`` start and end as
        fractions of the window, from the first to the last time part whose squared z-score
        reaches :data:`LOCATE_Z2` (the whole window ``(0, 1)`` when none does); ``None`` for a
        head without time parts."""
        if self._groups is None or self._groups < 2:
            return self(dense, mask), None
        z2 = self.z2(*self.log_energy(dense, mask))
        parts = z2[:, 1:]
        n = parts.shape[1]
        hit = parts >= LOCATE_Z2
        idx = torch.arange(n, device=parts.device).expand_as(parts)
        first = torch.where(hit, idx, n).min(dim=1).values
        last = torch.where(hit, idx, -1).max(dim=1).values
        none = ~hit.any(dim=1)
        start = torch.where(none, 0, first).to(z2.dtype) / n
        end = torch.where(none, n, last + 1).to(z2.dtype) / n
        return z2.sum(dim=1), torch.stack([start, end], dim=1)

    def forward(self, dense: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Anomaly scores ``(N,)``: the sum over groups of the log-energy's squared z-score
        (higher = more anomalous)."""
        if self._groups is None:
            z = (self.log_energy(dense, mask) - self.center) / self.scale
            return z * z
        return self.z2(*self.log_energy(dense, mask)).sum(dim=1)
