"""Units of voltage channels: read every convention, convert to microvolts, refuse what is wrong.

Convention (one for the whole project): **voltage channels travel and arrive in microvolts**, and
model bundles are trained on microvolts. Producers write units in many ways; :func:`unit_factor`
reads them all:

=================================================  ==========================================
unit in the header (case-insensitive)              factor to microvolts
=================================================  ==========================================
``V``, ``volt(s)``                                 1e6
``mV``, ``millivolt(s)``                           1e3
``uV``, ``µV`` (micro sign), ``μV`` (Greek mu),    1
``microvolt(s)``
``nV``, ``nanovolt(s)``                            1e-3
a power-of-ten code: ``"0"``, ``"-3"``, ``"-6"``,  ``10 ** (code + 6)`` (mne-lsl's convention:
``"-9"`` ...                                       ``"0"`` = volts, ``"-6"`` = microvolts)
=================================================  ==========================================

Channels of a voltage type (:data:`VOLTAGE_TYPES`: EEG, ECG, EMG, EOG, ...) must be readable:

* an unknown unit (``"counts"``, ``"AU"``, ...) on such a channel is refused
  (:class:`UnitError`), unless the user states the unit (``--units``);
* an empty unit is read as microvolts (the most common LSL practice) and flagged as assumed;
* the amplitude is checked against the channel type (:func:`check_amplitude`): EEG whose typical
  2-s range exceeds 20 mV (beyond +-10 mV) or is below 2 uV (less than an EEG amplifier's own
  noise) cannot be EEG in microvolts, so the stream is refused with the unit that would fit (for
  example volts sent as microvolts, or a GDF file whose microvolt header MNE read as volts,
  10^6 too large), or, when no unit fits, with what to check and how to state the unit.

Channels of other types (PPG, accelerometer, markers) keep their values and their unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dropstream.acquisition.errors import AcquisitionError

MICROVOLTS = "microvolts"

#: Channel types whose values are voltages (upper case).
VOLTAGE_TYPES = frozenset({"EEG", "ECG", "EMG", "EOG", "SEEG", "ECOG", "EXG", "DBS"})

#: Lower-cased unit spellings -> factor to microvolts.
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

#: Plausible (lowest, usual, highest) typical range in microvolts of a voltage channel, per
#: type: the median over 2-s blocks of the 0.5-99.5 percentile spread. The upper bounds are wide
#: on purpose: they catch a wrong power of ten, not an unusual recording (the shipped PLUX EEG
#: spans 20-25 uV, PhysioNet EEG ~200 uV, MIT-BIH ECG ~1.4 mV). The lower bounds are what the
#: body and the amplifier cannot go below:
#:
#: * EEG 2 uV: scalp EEG is 10-100 uV, and the IFCN standard for digital EEG (Nuwer et al.,
#:   1998) allows an amplifier 2 uV peak-to-peak of noise (0.16-100 Hz) - a 2-s range below
#:   that holds no brain signal, only a wrong scale or gain;
#: * ECG 50 uV: a tenth of the "low QRS voltage" criterion (QRS < 0.5 mV in every limb lead, a
#:   pathological finding), room for chest-worn leads (the shipped PLUX ECG spans ~220 uV);
#: * EMG 1 uV: a resting muscle's surface EMG is the amplifier's noise floor, ~1-2 uV RMS
#:   (SENIAM recommendations, Hermens et al., 2000), whose 0.5-99.5 % spread is several uV;
#: * PPG and other channels without a voltage unit (AU, fraction of the ADC range) have no
#:   absolute scale to check: their scale is compared with the training data's by the drift
#:   guard (:mod:`dropstream.inference.drift`), as is every channel's.
#:
#: The usual value picks the unit to suggest when several would fit.
PLAUSIBLE_RANGE_UV: dict[str, tuple[float, float, float]] = {
    "EEG": (2.0, 50.0, 20_000.0),
    "ECG": (50.0, 1_500.0, 50_000.0),
    "EMG": (1.0, 200.0, 50_000.0),
    "EOG": (0.5, 300.0, 50_000.0),
}
_DEFAULT_RANGE_UV = (0.01, 100.0, 100_000.0)

#: Units offered when a scale is implausible, with the factor to microvolts.
_CANDIDATES = (("V", 1e6), ("mV", 1e3), ("uV", 1.0), ("nV", 1e-3))


class UnitError(AcquisitionError):
    """A voltage channel's unit is unknown, or its amplitude does not fit its type in microvolts."""


def unit_factor(unit: str | None) -> float | None:
    """Factor that converts a value in ``unit`` to microvolts, ``None`` if not a voltage unit.

    Parameters
    ----------
    unit : str | None
        Unit as written in an LSL header, an XDF file, by MNE or mne-lsl (case-insensitive;
        power-of-ten codes such as ``"-6"`` are read as powers of ten of volts).

    Returns
    -------
    float | None
        Multiplier to microvolts; ``None`` when ``unit`` is empty or not a voltage unit.
    """
    if not unit:
        return None
    text = unit.strip().lower()
    if text in _TO_MICROVOLTS:
        return _TO_MICROVOLTS[text]
    try:
        code = int(text)
    except ValueError:
        return None
    if -12 <= code <= 3:
        return 10.0 ** (code + 6)
    return None


def is_voltage_type(channel_type: str) -> bool:
    """True for channel types whose values are voltages (EEG, ECG, EMG, EOG, ...)."""
    return channel_type.upper() in VOLTAGE_TYPES


def parse_override(units: str | None) -> float | None:
    """Factor of a user's ``--units`` value; ``None`` when not given.

    Raises
    ------
    UnitError
        When the text is not a voltage unit.
    """
    if units is None:
        return None
    factor = unit_factor(units)
    if factor is None:
        raise UnitError(
            f"--units {units!r} is not a voltage unit; use V, mV, uV, nV or an mne-lsl "
            "power-of-ten code such as -6"
        )
    return factor


@dataclass(frozen=True)
class UnitPlan:
    """How each channel of a stream or file becomes what dropstream delivers.

    Attributes
    ----------
    factors : tuple of float
        Multiplier per channel (1.0 for channels that pass through).
    units : tuple of str
        Unit per channel after conversion (``"microvolts"`` for voltage channels).
    assumed : tuple of str
        Names of voltage channels whose header had no unit (read as microvolts).
    stated : bool
        True when the user gave the unit (``--units``); the amplitude check then only warns.
    """

    factors: tuple[float, ...]
    units: tuple[str, ...]
    assumed: tuple[str, ...] = ()
    stated: bool = False

    @property
    def needs_scale(self) -> bool:
        """True when any channel is multiplied by something other than 1."""
        return any(f != 1.0 for f in self.factors)


def plan_units(
    channel_names: Sequence[str],
    channel_types: Sequence[str],
    units: Sequence[str],
    override: str | None = None,
    *,
    source: str = "stream",
) -> UnitPlan:
    """Decide the conversion of every channel to what dropstream delivers.

    Parameters
    ----------
    channel_names, channel_types, units : sequence of str
        One entry per channel, as declared by the producer.
    override : str | None
        The unit the user states for every voltage-type channel (``--units``), replacing the
        declared ones; ``None`` reads the declared units.
    source : str
        How to name the stream or file in messages.

    Raises
    ------
    UnitError
        When a voltage-type channel declares a unit that is not a voltage unit and no
        ``override`` is given, or ``override`` is not a voltage unit.
    """
    stated = parse_override(override)
    factors: list[float] = []
    out: list[str] = []
    assumed: list[str] = []
    unknown: list[str] = []
    for name, ctype, unit in zip(channel_names, channel_types, units, strict=True):
        voltage_type = is_voltage_type(ctype)
        factor = stated if (stated is not None and voltage_type) else unit_factor(unit)
        if factor is None and voltage_type:
            if unit and unit.strip():
                unknown.append(f"{name} ({unit!r})")
            else:
                assumed.append(name)
                factor = 1.0
        if factor is None:
            factors.append(1.0)
            out.append(unit)
        else:
            factors.append(float(factor))
            out.append(MICROVOLTS)
    if unknown:
        raise UnitError(
            f"{source}: voltage channel(s) {', '.join(unknown[:4])}"
            f"{'...' if len(unknown) > 4 else ''} declare a unit that is not a voltage; "
            "pass --units with the unit the values are in (V, mV, uV, or an mne-lsl code like -6)"
        )
    return UnitPlan(tuple(factors), tuple(out), tuple(assumed), stated is not None)


def typical_range(data: np.ndarray, sfreq: float, block_s: float = 2.0) -> np.ndarray:
    """Per-channel typical amplitude range: median over ``block_s`` blocks of the 0.5-99.5
    percentile spread (robust to DC offsets, artefacts and flat stretches).

    Parameters
    ----------
    data : numpy.ndarray, shape (n_samples, n_channels)
    sfreq : float
        Sample rate, Hz (``<= 0``: one block).
    """
    x = np.asarray(data, dtype=np.float64)
    n = x.shape[0]
    block = n if sfreq <= 0 else max(2, int(round(block_s * sfreq)))
    spreads = []
    for start in range(0, max(1, n - block + 1), block):
        part = x[start : start + block]
        finite = np.where(np.isfinite(part), part, np.nan)
        if np.all(np.isnan(finite)):
            continue
        hi, lo = np.nanpercentile(finite, [99.5, 0.5], axis=0)
        spreads.append(hi - lo)
    if not spreads:
        return np.full(x.shape[1], np.nan)
    return np.nanmedian(np.stack(spreads), axis=0)


def check_amplitude(
    data: np.ndarray,
    sfreq: float,
    channel_types: Sequence[str],
    *,
    source: str = "stream",
    declared: Sequence[str] | None = None,
    factors: Sequence[float] | None = None,
    stated: bool = False,
) -> list[str]:
    """Check that voltage channels in microvolts have an amplitude their type can have.

    For each voltage type present, the median over its channels of :func:`typical_range` must lie
    in :data:`PLAUSIBLE_RANGE_UV`. Flat channels (range 0) are left out of the median.

    Parameters
    ----------
    data : numpy.ndarray, shape (n_samples, n_channels)
        Values after conversion to microvolts.
    sfreq : float
        Sample rate, Hz.
    channel_types : sequence of str
    source : str
        Stream or file name for the message.
    declared : sequence of str, optional
        The units the producer declared (quoted in the message).
    factors : sequence of float, optional
        The factors that converted the declared values to microvolts (to name the unit the
        declared values would really be in); default 1 (values as declared were microvolts).
    stated : bool
        The user stated the unit (``--units``): report problems as warnings instead of raising.

    Returns
    -------
    list of str
        Warnings (only when ``stated``).

    Raises
    ------
    UnitError
        When the amplitude cannot be that channel type in microvolts; the message names the
        unit that would fit and the ``--units`` flag to state it.
    """
    types = [t.upper() for t in channel_types]
    spread = typical_range(data, sfreq)
    warnings: list[str] = []
    for ctype in sorted({t for t in types if t in VOLTAGE_TYPES}):
        cols = [i for i, t in enumerate(types) if t == ctype]
        values = spread[cols]
        values = values[np.isfinite(values) & (values > 0)]
        if values.size == 0:
            continue
        typical = float(np.median(values))
        lo, usual, hi = PLAUSIBLE_RANGE_UV.get(ctype, _DEFAULT_RANGE_UV)
        if lo <= typical <= hi:
            continue
        applied = 1.0 if factors is None else float(np.median([factors[i] for i in cols]))
        fits = sorted(
            (abs(np.log(typical * f / applied / usual)), u)
            for u, f in _CANDIDATES
            if f != applied and lo <= typical * f / applied <= hi
        )
        said = ""
        if declared is not None:
            said = f" (declared {sorted({declared[i] or '(none)' for i in cols})})"
        if fits:
            guess = f"the values look like {fits[0][1]}: pass --units {fits[0][1]}"
        elif typical < lo:
            now = (declared[cols[0]] if declared is not None else "") or "uV"
            guess = (
                "no unit makes it plausible: check the sensor's gain, its placement and the "
                "file's conversion to volts; to use it anyway, state its unit "
                f"(--units {now}; it is then kept with a warning, and the drift guard still "
                "compares its scale with the training data's)"
            )
        else:
            guess = "check the sensor and the file, then pass --units with the right unit"
        below = "below" if typical < lo else "above"
        message = (
            f"{source}: {ctype} channels span {typical:.3g} uV (typical 2-s range) after unit "
            f"conversion{said}, {below} the {lo:g}-{hi:g} uV an {ctype} signal can have; {guess}"
        )
        if not stated:
            raise UnitError(message)
        warnings.append(message + " (kept: --units was given)")
    return warnings
