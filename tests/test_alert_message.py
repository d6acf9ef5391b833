"""Alert JSON schema: round trip, deterministic ids, typed errors on malformed input."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropstream.broker.alert_message import AlertMessage, decode_alert, make_alert_id
from dropstream.broker.wire import WireFormatError


def _alert(**changes: object) -> AlertMessage:
    base = dict(
        alert_id=make_alert_id("dev-1", "ecg", 17),
        status="closed",
        device_id="dev-1",
        stream_id="ecg",
        kind="anomaly",
        label="anomaly",
        onset_time=12.5,
        offset_time=14.0,
        onset_sequence=17,
        offset_sequence=20,
        score=3.2,
        threshold=1.5,
        model_id="ecg-novelty",
        model_version=1,
        produced_at=1.79e9,
        detection_latency_s=0.042,
    )
    base.update(changes)
    return AlertMessage(**base)  # type: ignore[arg-type]


def test_round_trip_and_schema_fields() -> None:
    alert = _alert()
    body = json.loads(alert.to_json())
    assert body["schema"] == "dropstream.alert" and body["version"] == 1
    assert decode_alert(alert.to_json()) == alert
    opened = _alert(status="open", offset_time=None, offset_sequence=None)
    assert decode_alert(opened.to_json()) == opened
    located = _alert(onset_time=12.75, onset_window_time=12.5)  # the head located the onset
    assert decode_alert(located.to_json()).onset_window_time == 12.5
    body = json.loads(alert.to_json())
    del body["onset_window_time"]  # producers before the field omit it
    assert decode_alert(json.dumps(body).encode()).onset_window_time is None


def test_alert_id_is_deterministic() -> None:
    assert make_alert_id("a", "s", 3) == make_alert_id("a", "s", 3)
    assert (
        len(
            {
                make_alert_id("a", "s", 3),
                make_alert_id("a", "s", 4),
                make_alert_id("b", "s", 3),
                make_alert_id("a", "t", 3),
            }
        )
        == 4
    )


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b.pop("score"), "differ from the schema"),
        (lambda b: b.update(extra=1), "differ from the schema"),
        (lambda b: b.update(version=2), "version"),
        (lambda b: b.update(schema="other"), "not a dropstream.alert"),
        (lambda b: b.update(status="maybe"), "status"),
        (lambda b: b.update(score="high"), "finite number"),
        (lambda b: b.update(score=True), "finite number"),
        (lambda b: b.update(onset_sequence=-1), "non-negative integer"),
        (lambda b: b.update(device_id=""), "non-empty string"),
        (lambda b: b.update(offset_time=None), "closed alert needs"),
    ],
)
def test_malformed_alerts_raise_typed_error(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    body = json.loads(_alert().to_json())
    mutate(body)
    with pytest.raises(WireFormatError, match=reason):
        decode_alert(json.dumps(body).encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_typed_error(data: bytes) -> None:
    with contextlib.suppress(WireFormatError):
        decode_alert(data)


def test_wall_clock_and_recording_times_are_optional_fields() -> None:
    """Alerts from producers before these fields still decode (the fields read None)."""
    old = json.loads(_alert().to_json())
    for name in ("onset_utc", "offset_utc", "recording_onset", "recording_offset"):
        assert old.pop(name) is None
    decoded = decode_alert(json.dumps(old).encode())
    assert decoded.onset_utc is None and decoded.recording_onset is None
    new = _alert(onset_utc=1.79e9, offset_utc=1.79e9 + 1.5, recording_onset=9.0)
    assert decode_alert(new.to_json()) == new
    with pytest.raises(WireFormatError, match="finite number"):
        decode_alert(json.dumps(json.loads(new.to_json()) | {"onset_utc": "noon"}).encode())
    with pytest.raises(WireFormatError, match="differ from the schema"):
        decode_alert(json.dumps(old | {"onset_wall": 1.0}).encode())


def test_the_alerts_table_shows_utc_times_recording_span_and_full_ids() -> None:
    from dropstream.commands.alerts import format_alert, table_header

    device, stream = "clinic-7/a-very-long-device-name", "dropstream-replay-ecg_artefacts-0001"
    row = format_alert(
        _alert(
            device_id=device,
            stream_id=stream,
            onset_utc=1796000000.25,
            offset_utc=1796000003.5,
            recording_onset=9.0,
            recording_offset=12.25,
        )
    )
    assert f"{device} / {stream}" in row
    assert "2026-09-21 14:13:20" in row  # produced_at 1.79e9 s as a UTC date
    assert "00:53:20.250" in row and "00:53:23.500" in row  # onset/offset, UTC
    assert "9.00-12.25" in row
    assert "in recording" in table_header()
    assert "LSL 12.50" in format_alert(_alert())  # no wall times: the LSL ones
