"""Typed errors of the acquisition package (LSL inlets, replay, recordings)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dropstream.errors import DropstreamError

if TYPE_CHECKING:
    from dropstream.acquisition.inlet import Chunk


class AcquisitionError(DropstreamError):
    """Base class of every acquisition error."""


class StreamNotFoundError(AcquisitionError):
    """No LSL stream matched the query; the message lists the streams that were found."""


class AmbiguousStreamError(AcquisitionError):
    """Several LSL streams matched the query; the message lists them (query by source id)."""


class StreamLostError(AcquisitionError):
    """A stream stopped delivering and could not be recovered."""


class UnsupportedStreamError(AcquisitionError):
    """The stream cannot be read by this inlet (for example a string stream in a data inlet)."""


class SampleQualityError(AcquisitionError):
    """A chunk carried samples that must not be used silently.

    The offending chunk is attached as :attr:`chunk` so nothing already received is lost.
    """

    def __init__(self, message: str, chunk: Chunk) -> None:
        super().__init__(message)
        self.chunk = chunk


class NonFiniteSampleError(SampleQualityError):
    """A chunk contained NaN or infinite values (raised when the inlet is strict about it)."""


class RateChangedError(SampleQualityError):
    """The measured sampling rate differs from the nominal rate in the stream header."""


class RecordingError(AcquisitionError):
    """A recording is missing, unreadable, unsupported or empty."""
