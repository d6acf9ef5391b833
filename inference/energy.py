"""The energy novelty head: how far a window's kept activations' energy is from normal.

A novelty bundle's first layer (:func:`dropstream.inference.training.train_novelty`) projects
the **whitened** window onto random directions: ``a = relu(G S^-1/2 x)``, with ``S`` the
covariance of normal training windows. For a random direction ``g``, ``E[relu(g.u)^2]`` is
half of ``|u|^2``, so the mean over the ``K`` kept units of ``a_i^2 / E_normal[a_i^2]`` estimates
the window's squared Mahalanobis norm ``x' S^-1 x`` relative to normal windows, from whichever
units the device kept. Normal windows have energy close to 1; an artefact puts energy where
normal signal has little (EMG on an ECG, a movement on EEG) or removes the usual energy (a
flat or detached sensor), and both move the log-energy away from normal.

The score is the squared z-score of the log-energy against its distribution on normal training
windows, ``((log E - center) / scale)^2``: two-sided and comparable across bundles. It needs no
training by gradient descent (seconds on a CPU) and works for any kept set.
"""

from __future__ import annotations

import torch
from torch import nn


class EnergyScorer(nn.Module):
    """Novelty score of dense activations ``(N, m)`` (NaN at dropped units) from their energy.

    Parameters
    ----------
    width : int
        First-layer units ``m``.
    keep : int
        Units kept per window ``K``.

    Buffers ``unit_power`` (``E[a_i^2]`` on normal windows, ``(m,)``), ``center`` and ``scale``
    (mean and standard deviation of the normal windows' log-energy) are set by training and
    stored in the bundle's head state.
    """

    def __init__(self, width: int, keep: int) -> None:
        super().__init__()
        self._width, self._keep = int(width), int(keep)
        self.register_buffer("unit_power", torch.ones(int(width)))
        self.register_buffer("center", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    @property
    def width(self) -> int:
        """First-layer width ``m``."""
        return self._width

    @property
    def keep(self) -> int:
        """Units kept per window ``K``."""
        return self._keep

    def log_energy(self, dense: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``log`` of the mean of ``a_i^2 / unit_power_i`` over each window's kept units."""
        kept = ~torch.isnan(dense) if mask is None else mask.bool()
        v = torch.where(kept, torch.nan_to_num(dense), torch.zeros_like(dense))
        ratio = v * v / self.unit_power
        count = kept.sum(dim=1).clamp_min(1).to(ratio.dtype)
        return torch.log(ratio.sum(dim=1) / count + 1e-12)

    def forward(self, dense: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Anomaly scores ``(N,)``: squared z-score of the log-energy (higher = more anomalous)."""
        z = (self.log_energy(dense, mask) - self.center) / self.scale
        return z * z
