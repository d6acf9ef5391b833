"""Which torch device runs the server side: one choice for training and serving alike."""

from __future__ import annotations

import torch

from dropstream.errors import DropstreamError


def torch_device(name: str, error: type[DropstreamError] = DropstreamError) -> torch.device:
    """The torch device for ``"auto"`` (CUDA when present, else CPU), ``"cpu"`` or ``"cuda"``.

    Parameters
    ----------
    name : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or any other name :class:`torch.device` takes.
    error : type of DropstreamError
        What to raise when ``"cuda"`` is asked for and no CUDA device is present (the caller's
        own error type, e.g. ``TrainingError`` or ``ServiceError``).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise error("device 'cuda' asked for but no CUDA device is present; use 'cpu' or 'auto'")
    return torch.device(name)
