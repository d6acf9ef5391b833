"""scipy's compiled second-order-section filter loop, without importing :mod:`scipy.signal`.

Importing :mod:`scipy.signal` costs a device about 75 MiB of resident memory (it pulls in
scipy.stats, scipy.interpolate, scipy.sparse, ...) and ~2 s, for one loop it needs:
the one :func:`scipy.signal.sosfilt` runs after reshaping its input. :func:`sos_kernel` loads that
compiled loop (``scipy/signal/_sosfilt``) from its file alone; where this scipy has no such file
or it does not load, it falls back to :func:`scipy.signal.sosfilt` itself (the same numbers).
Used by the inlet's timestamp smoothing (:mod:`dropstream.acquisition.loss`) and the device's
filters (:mod:`dropstream.local_encoder.preprocessing`); ``tests/test_model_preprocessing.py``
checks both paths against :func:`scipy.signal.sosfilt`, bit for bit.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: ``kernel(sos, x, zi)``, see :func:`sos_kernel`.
Kernel = Callable[[np.ndarray, np.ndarray, np.ndarray], None]
_KERNEL: Kernel | None = None


def sos_kernel() -> Kernel:
    """``kernel(sos, x, zi)``: filters ``x (signals, samples)`` in place with the sections
    ``sos (n_sections, 6)``, carrying the state ``zi (signals, n_sections, 2)`` (updated in
    place); all three C-contiguous and of one float dtype. Loaded once."""
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _load() or sosfilt_public
    return _KERNEL


def _load() -> Kernel | None:
    try:
        import scipy

        folder = Path(scipy.__file__).parent / "signal"
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = folder / f"_sosfilt{suffix}"
            if path.exists():
                loader = importlib.machinery.ExtensionFileLoader("_sosfilt", str(path))
                spec = importlib.util.spec_from_file_location("_sosfilt", path, loader=loader)
                if spec is None:
                    return None
                module = importlib.util.module_from_spec(spec)
                loader.exec_module(module)
                return module._sosfilt
    except (ImportError, OSError, AttributeError):
        pass
    return None


def sosfilt_public(sos: np.ndarray, x: np.ndarray, zi: np.ndarray) -> None:
    """The kernel's contract through :func:`scipy.signal.sosfilt` (the fallback)."""
    from scipy.signal import sosfilt

    y, zf = sosfilt(sos, x, axis=-1, zi=np.moveaxis(zi, 1, 0))
    x[...] = y
    zi[...] = np.moveaxis(zf, 0, 1)
