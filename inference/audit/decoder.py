"""The learned attacker: a torch MLP from masked activations to the window.

It is trained on windows of *other* recordings (or other trials) pushed through the very same
first layer, with a fresh random mask of ``K`` kept units per window and epoch (and a fresh draw
of the layer's privacy noise, which the attacker knows), so it learns the
mapping from (kept values, which units were kept) to the window, including whatever prior
structure the signal has (smoothness, channel correlation, typical rhythms). It is then evaluated
on held-out recordings. This is the strongest practical attack of the audit: it needs no
assumption beyond access to similar data, which a server operator usually has.

Input per window: the ``m`` activation values with dropped units set to 0, standardised per unit
with statistics of the training activations, concatenated with the 0/1 keep mask (``2 m``
features). Output: the flattened window (``C * T``), in the normalised domain the layer sees.
Architecture: a linear path plus a two-hidden-layer GELU MLP (the linear path alone can represent
the Gaussian MAP estimate for a fixed mask; the MLP adds non-linear corrections).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dropstream.inference.audit.attacks import Messages
from dropstream.inference.model import random_keep_mask
from dropstream.local_encoder.first_layer import FirstLayer

log = logging.getLogger(__name__)


class MaskedDecoder(nn.Module):
    """``(values, mask) -> window``; see the module docstring."""

    def __init__(self, width: int, n_outputs: int, hidden: int = 1024) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * width, n_outputs)
        self.mlp = nn.Sequential(
            nn.Linear(2 * width, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, n_outputs),
        )

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([values * mask, mask], dim=-1)
        return self.linear(feats) + self.mlp(feats)


@dataclass
class DecoderAttack:
    """A trained decoder with the activation statistics it standardises with."""

    model: MaskedDecoder
    act_mean: np.ndarray
    act_std: np.ndarray
    n_channels: int
    train_seconds: float
    epochs: int

    def reconstruct(self, messages: Messages) -> np.ndarray:
        """Reconstruct the windows of ``messages``; returns ``(N, C, T)`` float32."""
        dense, mask = messages.dense()
        vals = (dense - self.act_mean) / self.act_std
        self.model.eval()
        out = []
        with torch.no_grad():
            for s in range(0, len(messages), 512):
                v = torch.from_numpy(vals[s : s + 512].astype(np.float32))
                k = torch.from_numpy(mask[s : s + 512])
                out.append(self.model(v, k).numpy())
        flat = np.concatenate(out) if out else np.zeros((0, self.model.linear.out_features))
        return flat.reshape(len(messages), self.n_channels, -1).astype(np.float32)


def train_decoder(
    layer: FirstLayer,
    train_windows: np.ndarray,
    keep: int,
    *,
    value_dtype: str = "float16",
    epochs: int = 60,
    max_seconds: float = 120.0,
    hidden: int = 1024,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
) -> DecoderAttack:
    """Train a :class:`MaskedDecoder` on windows ``(N, C, T)`` of the attacker's own recordings.

    Parameters
    ----------
    layer : FirstLayer
        The device's first layer (known to the attacker).
    train_windows : numpy.ndarray, shape (N, C, T)
        Normalised windows the attacker holds (never the evaluated recordings).
    keep : int
        ``K``, units kept per window; each epoch draws a fresh random mask per window.
    value_dtype : str
        Wire dtype; activations are rounded to it as on the wire.
    epochs, max_seconds : int, float
        Stop after this many epochs or this much wall time, whichever comes first.
    hidden, batch_size, lr, seed
        Network width and optimiser settings.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = np.asarray(train_windows, np.float32)
    n, c, t = x.shape
    flat = x.reshape(n, c * t)
    z = flat @ layer.dense_weight.T + layer.bias  # noise-free pre-activations

    def device_values() -> np.ndarray:
        """What the device sends: a fresh draw of its privacy noise, activation, rounding."""
        a = layer.activate(z + layer.draw_noise(rng, (n,)) if layer.noise > 0 else z)
        return a.astype(np.dtype(value_dtype)).astype(np.float32)

    act = device_values()
    act_mean = act.mean(axis=0)
    act_std = act.std(axis=0) + 1e-6
    target = torch.from_numpy(flat)
    model = MaskedDecoder(layer.width, c * t, hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    start = time.perf_counter()
    done = 0
    for epoch in range(epochs):
        model.train()
        mask = random_keep_mask(n, layer.width, keep, gen)  # fresh K units per window, epoch
        if epoch == 0 or layer.noise > 0:  # fresh device noise per window and epoch
            act = act if epoch == 0 else device_values()
            act_n = torch.from_numpy(((act - act_mean) / act_std).astype(np.float32))
        perm = torch.from_numpy(rng.permutation(n))
        total = 0.0
        for s in range(0, n, batch_size):
            b = perm[s : s + batch_size]
            pred = model(act_n[b], mask[b])
            loss = torch.mean((pred - target[b]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        sched.step()
        done = epoch + 1
        log.info("decoder epoch %d: train MSE %.4f", done, total / n)
        if time.perf_counter() - start > max_seconds:
            break
    return DecoderAttack(
        model=model,
        act_mean=act_mean,
        act_std=act_std,
        n_channels=c,
        train_seconds=time.perf_counter() - start,
        epochs=done,
    )
