"""Find LSL streams on the network by type, name or source id."""

from __future__ import annotations

import pylsl

from dropstream.acquisition.errors import AmbiguousStreamError, StreamNotFoundError
from dropstream.acquisition.info import StreamInfo, from_lsl


def _predicate(name: str | None, type: str | None, source_id: str | None) -> str:
    parts = []
    for key, value in (("name", name), ("type", type), ("source_id", source_id)):
        if value is None:
            continue
        if "'" in value:
            raise ValueError(f"{key} {value!r} must not contain a single quote")
        parts.append(f"{key}='{value}'")
    if not parts:
        raise ValueError("give at least one of name, type or source_id to resolve a stream")
    return " and ".join(parts)


def available_streams(wait: float = 1.0) -> list[StreamInfo]:
    """Every stream visible on the network after waiting ``wait`` seconds (header fields only)."""
    return [from_lsl(i) for i in pylsl.resolve_streams(wait_time=wait)]


def _query_text(name: str | None, type: str | None, source_id: str | None) -> str:
    fields = (("name", name), ("type", type), ("source_id", source_id))
    return ", ".join(f"{k}={v!r}" for k, v in fields if v)


def find_streams(
    *,
    name: str | None = None,
    type: str | None = None,
    source_id: str | None = None,
    timeout: float = 5.0,
    minimum: int = 1,
) -> list[pylsl.StreamInfo]:
    """Every stream matching all given fields, waiting up to ``timeout`` seconds for ``minimum``.

    Parameters
    ----------
    name, type, source_id : str | None
        Fields to match exactly; at least one is required.
    timeout : float
        Seconds to wait for at least ``minimum`` matches.
    minimum : int
        Return as soon as this many streams matched.

    Returns
    -------
    list of pylsl.StreamInfo
        The matching streams (possibly more than ``minimum``).

    Raises
    ------
    StreamNotFoundError
        When nothing matched; the message lists what *was* found on the network.
    """
    pred = _predicate(name, type, source_id)
    found = pylsl.resolve_bypred(pred, minimum=minimum, timeout=timeout)
    if found:
        return list(found)
    others = available_streams(wait=min(1.0, max(timeout, 0.2)))
    listing = "; ".join(s.describe() for s in others) or "no stream at all"
    raise StreamNotFoundError(
        f"no LSL stream with {_query_text(name, type, source_id)} appeared within "
        f"{timeout:g} s. Found on the network: {listing}. Check that the device or "
        "'dropstream replay' is running and that the query matches one of these streams."
    )


def resolve_stream(
    *,
    name: str | None = None,
    type: str | None = None,
    source_id: str | None = None,
    timeout: float = 5.0,
) -> pylsl.StreamInfo:
    """Exactly one stream matching the query.

    Raises
    ------
    StreamNotFoundError
        Nothing matched within ``timeout`` (the message lists what was found).
    AmbiguousStreamError
        Several streams with different source ids matched; query by ``source_id``.
    """
    found = find_streams(name=name, type=type, source_id=source_id, timeout=timeout)
    ids = {(s.source_id() or s.uid()) for s in found}
    if len(ids) > 1:
        listing = "; ".join(from_lsl(s).describe() for s in found)
        raise AmbiguousStreamError(
            f"{len(ids)} LSL streams match {_query_text(name, type, source_id)}: {listing}. "
            "Pass a source id (or a more specific name) to pick one."
        )
    return found[0]
