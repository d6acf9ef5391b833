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

Voltage channels are delivered in microvolts (:mod:`acquisition.units`).
"""

from acquisition.errors import (
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
from acquisition.group import StreamGroup
from acquisition.info import StreamInfo
from acquisition.inlet import Chunk, LiveStream, Marker, MarkerStream
from acquisition.loss import Gap, SampleTimeline
from acquisition.lsl_config import quiet_liblsl_log
from acquisition.publish import Annotation, Publisher, Track
from acquisition.replay import RecordingReplay
from acquisition.resolve import available_streams, find_streams, resolve_stream

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
