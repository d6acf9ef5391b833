"""Acquisition: live LSL inlets and real-time replay of recorded biosignals (no torch).

Public API (what the on-device encoder consumes):

* :class:`LiveStream` / :class:`Chunk` - poll one numeric stream (clock-corrected, dejittered
  timestamps, loss accounting, reconnection).
* :class:`StreamGroup` - several streams of one person at once.
* :class:`MarkerStream` / :class:`Marker` - string marker streams (annotations).
* :class:`StreamInfo` - name, type, source id, rate, channel names/types/units.
* :func:`resolve_stream`, :func:`find_streams`, :func:`available_streams` - find streams.
* :class:`Gap` - a run of lost samples.
* :class:`RecordingReplay` - ``dropstream replay`` in-process (background thread);
  :class:`Publisher` / :class:`Track` - publish in-memory signals on one clock.

Voltage channels are delivered in microvolts (:mod:`dropstream.acquisition.units`).
"""

from dropstream.acquisition.errors import (
    AcquisitionError,
    AmbiguousStreamError,
    NonFiniteSampleError,
    RateChangedError,
    RecordingError,
    SampleQualityError,
    StreamLostError,
    StreamNotFoundError,
    UnsupportedStreamError,
)
from dropstream.acquisition.group import StreamGroup
from dropstream.acquisition.info import StreamInfo
from dropstream.acquisition.inlet import Chunk, LiveStream, Marker, MarkerStream
from dropstream.acquisition.loss import Gap, SampleTimeline
from dropstream.acquisition.lsl_config import quiet_liblsl_log
from dropstream.acquisition.publish import Annotation, Publisher, Track
from dropstream.acquisition.replay import RecordingReplay
from dropstream.acquisition.resolve import available_streams, find_streams, resolve_stream

quiet_liblsl_log()

__all__ = [
    "AcquisitionError",
    "AmbiguousStreamError",
    "Annotation",
    "Chunk",
    "Gap",
    "LiveStream",
    "Marker",
    "MarkerStream",
    "NonFiniteSampleError",
    "Publisher",
    "RateChangedError",
    "RecordingError",
    "RecordingReplay",
    "SampleQualityError",
    "SampleTimeline",
    "StreamGroup",
    "StreamInfo",
    "StreamLostError",
    "StreamNotFoundError",
    "Track",
    "UnsupportedStreamError",
    "available_streams",
    "find_streams",
    "resolve_stream",
]
