"""``dropstream replay``: publish recordings as live LSL streams at real-time pace."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dropstream.acquisition.replay import RecordingReplay

HELP = "publish recordings (EDF, BDF, GDF, FIF, BrainVision, EEGLAB, XDF) as live LSL streams"

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the arguments of ``dropstream replay``."""
    from dropstream.commands import add_units_argument

    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="recordings to replay; one stream per file, all on one clock",
    )
    parser.add_argument(
        "--speed", type=float, default=1.0, help="playback speed factor (default 1.0 = real time)"
    )
    parser.add_argument("--loop", action="store_true", help="start over at the end, forever")
    parser.add_argument(
        "--start", type=float, default=0.0, metavar="SECONDS", help="offset into the files"
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        metavar="SAMPLES",
        help="samples per push (default: what is due every ~10 ms)",
    )
    parser.add_argument(
        "--name", default=None, help="stream name (prefix '<name>-<file stem>' for several files)"
    )
    parser.add_argument(
        "--source-id",
        default=None,
        help="source id (prefix for several files); default dropstream-replay-<file stem>",
    )
    parser.add_argument(
        "--wait-for-consumers",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long for an inlet on every stream before starting the clock",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop after this many seconds of wall-clock time",
    )
    add_units_argument(parser, "the files (as read; MNE reads volts)")


def clock_line(replay: RecordingReplay) -> str:
    """One line that says when the first sample was published (LSL and UTC) and where."""
    import datetime as dt

    pub = replay.publisher
    utc = dt.datetime.fromtimestamp(pub.t0_utc or 0.0, dt.UTC).isoformat(timespec="milliseconds")
    where = (
        "in the stream headers (desc/dropstream_replay)"
        if pub.wait_for_consumers <= 0
        else "not in the headers (--wait-for-consumers)"
    )
    return (
        f"clock started: recording second {pub.start_offset:g} published at LSL time "
        f"{pub.t0:.6f} = {utc} (speed {pub.speed:g}); {where}"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``dropstream replay`` until the files end, ``--duration`` passes or Ctrl-C."""
    from dropstream.acquisition.errors import RecordingError
    from dropstream.acquisition.replay import RecordingReplay

    if args.speed <= 0:
        raise RecordingError(f"--speed must be > 0, got {args.speed}")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise RecordingError(f"--chunk-size must be >= 1 sample, got {args.chunk_size}")
    if args.start < 0:
        raise RecordingError(f"--start must be >= 0 seconds, got {args.start}")
    replay = RecordingReplay(
        args.files,
        speed=args.speed,
        loop=args.loop,
        start=args.start,
        chunk_size=args.chunk_size,
        name=args.name,
        source_id=args.source_id,
        wait_for_consumers=args.wait_for_consumers,
        units=args.units,
    )
    replay.start()
    for info in replay.streams:
        print(f"publishing {info.describe()}", flush=True)
    for info in replay.marker_streams:
        print(f"publishing markers {info.describe()}", flush=True)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    announced = False
    try:
        while not replay.wait(0.2):
            if not announced and replay.t0 is not None:
                announced = True
                print(clock_line(replay), flush=True)
            if deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        replay.stop()
    if replay.publisher.error is not None:
        print(f"dropstream replay: error: {replay.publisher.error}", file=sys.stderr)
        return 1
    print(f"done: {replay.publisher.samples_sent()}", flush=True)
    return 0
