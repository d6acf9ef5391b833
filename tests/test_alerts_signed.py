"""``dropstream alerts`` checks each alert's signature: forged alerts show as UNVERIFIED."""

from __future__ import annotations

import json

from dropstream.broker.auth import AlertSigner
from dropstream.broker.clients import make_producer
from tests.test_service_cli import alert, alerts_cli


def test_forged_alerts_are_flagged_or_left_out(kafka_config, tmp_path):
    service = AlertSigner.create(tmp_path / "service.key")
    forger = AlertSigner.create(tmp_path / "forger.key")
    genuine, unsigned, wrong_key, altered = (
        alert("dev-a", "open", onset=1),
        alert("dev-a", "open", onset=2),
        alert("dev-a", "open", onset=3),
        alert("dev-a", "open", onset=4),
    )
    producer = make_producer(kafka_config)
    topic = kafka_config.alerts_topic

    def send(msg, headers, value=None):
        key = msg.device_id.encode()
        producer.send(topic, key=key, value=value or msg.to_json(), headers=headers, partition=0)

    send(genuine, service.headers(b"dev-a", genuine.to_json()))
    send(unsigned, [])
    send(wrong_key, forger.headers(b"dev-a", wrong_key.to_json()))
    # a genuine signature over another alert's bytes
    send(altered, service.headers(b"dev-a", genuine.to_json()), altered.to_json())
    producer.flush()
    producer.close()

    pub = str(tmp_path / "service.pub")
    rows = alerts_cli(kafka_config, "--alert-public-key", pub).splitlines()
    assert rows[0].split()[-1] == "signature"
    marks = {a.alert_id: None for a in (genuine, unsigned, wrong_key, altered)}
    for row in rows[1:]:
        for alert_id in marks:
            if alert_id in row:
                marks[alert_id] = row.split()[-1]
    assert list(marks.values()) == ["verified", "UNVERIFIED", "UNVERIFIED", "UNVERIFIED"]

    # JSON lines say "verified" too; --verified-only keeps the genuine one (others on stderr)
    only = alerts_cli(kafka_config, "--alert-public-key", pub, "--verified-only", "--json")
    bodies = [json.loads(line) for line in only.splitlines()]
    assert [(b["alert_id"], b["verified"]) for b in bodies] == [(genuine.alert_id, True)]
