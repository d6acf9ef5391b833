"""Unit convention of dropstream's LSL streams.

Convention (one for the whole project): **voltage channels travel and arrive in microvolts**.

* MNE holds voltages in volts; :mod:`dropstream.acquisition.replay` multiplies them by 1e6
  and writes
  ``"microvolts"`` as the channel unit in the LSL header.
* :class:`dropstream.acquisition.inlet.LiveStream` reads each channel's unit from the header and
scales every
  voltage channel to microvolts (``"V"``/``"volts"`` x 1e6, ``"mV"`` x 1e3, ``"uV"``/``"µV"``
  x 1); its :class:`~dropstream.acquisition.info.StreamInfo` then reports ``"microvolts"`` for them.
* Any other unit (``"AU"``, ``"percent"``, an empty string, ...) passes through unchanged and is
  reported as found.

The model bundle is trained on what the inlet delivers, i.e. microvolts for EEG, ECG and EMG.
"""

from __future__ import annotations

MICROVOLTS = "microvolts"

#: Lower-cased unit spellings found in LSL headers -> factor to microvolts.
_TO_MICROVOLTS: dict[str, float] = {
    "v": 1e6,
    "volt": 1e6,
    "volts": 1e6,
    "mv": 1e3,
    "millivolt": 1e3,
    "millivolts": 1e3,
    "uv": 1.0,
    "µv": 1.0,  # noqa: RUF001 - micro sign
    "μv": 1.0,  # noqa: RUF001 - Greek mu
    "microvolt": 1.0,
    "microvolts": 1.0,
    "nv": 1e-3,
    "nanovolt": 1e-3,
    "nanovolts": 1e-3,
}


def microvolt_factor(unit: str | None) -> float | None:
    """Factor that converts a value in ``unit`` to microvolts, or ``None`` if not a voltage.

    Parameters
    ----------
    unit : str | None
        Unit as written in an LSL header or by MNE (case-insensitive).

    Returns
    -------
    float | None
        Multiplier to microvolts, ``None`` when ``unit`` is not a voltage unit.
    """
    if not unit:
        return None
    return _TO_MICROVOLTS.get(unit.strip().lower())
