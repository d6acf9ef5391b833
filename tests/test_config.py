"""Client configuration: precedence flags > environment > TOML > defaults, and validation."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from dropstream.broker.config import ClientConfig, ConfigError, add_client_arguments


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dropstream.toml"
    path.write_text(text)
    return path


def test_precedence(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[kafka]\nbootstrap = "toml:1"\npartitions = 3\nlinger_ms = 7\n')
    env = {"DROPSTREAM_BOOTSTRAP": "env:2", "DROPSTREAM_PARTITIONS": "5"}
    config = ClientConfig.load(
        overrides={"bootstrap": "flag:3", "linger_ms": None}, env=env, path=path
    )
    assert config.bootstrap == "flag:3"  # flag beats env and TOML
    assert config.partitions == 5  # env beats TOML
    assert config.linger_ms == 7  # TOML beats default; an unset flag (None) changes nothing
    assert ClientConfig.load(env={}).bootstrap == "localhost:9092"


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[kafka]\nalerts_topic = "clinic.alerts"\n')
    config = ClientConfig.load(env={"DROPSTREAM_CONFIG": str(path)})
    assert config.alerts_topic == "clinic.alerts"


def test_cli_flags(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_client_arguments(parser)
    args = parser.parse_args(
        [
            "--bootstrap",
            "k1:9093,k2:9093",
            "--security-protocol",
            "SSL",
            "--ssl-cafile",
            "/ca.pem",
            "--ssl-certfile",
            "/c.pem",
            "--ssl-keyfile",
            "/k.pem",
        ]
    )
    config = ClientConfig.from_args(args)
    kw = config.producer_kwargs()
    assert kw["bootstrap_servers"] == ["k1:9093", "k2:9093"]
    assert kw["security_protocol"] == "SSL"
    assert (kw["ssl_cafile"], kw["ssl_certfile"], kw["ssl_keyfile"]) == (
        "/ca.pem",
        "/c.pem",
        "/k.pem",
    )
    assert kw["acks"] == "all" and kw["enable_idempotence"] is True
    assert kw["batch_size"] > 4096


def test_sasl_scram_kwargs() -> None:
    config = ClientConfig.load(
        env={
            "DROPSTREAM_SECURITY_PROTOCOL": "SASL_SSL",
            "DROPSTREAM_SASL_MECHANISM": "SCRAM-SHA-512",
            "DROPSTREAM_SASL_USERNAME": "clinic",
            "DROPSTREAM_SASL_PASSWORD": "s3cret",
        }
    )
    kw = config.consumer_kwargs()
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("clinic", "s3cret")
    assert kw["enable_auto_commit"] is False


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"DROPSTREAM_PARTITIONS": "many"}, "not a valid int"),
        ({"DROPSTREAM_PARTITIONS": "0"}, "partitions must be >= 1"),
        ({"DROPSTREAM_SECURITY_PROTOCOL": "TLS"}, "security_protocol"),
        ({"DROPSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "needs sasl_mechanism"),
        ({"DROPSTREAM_SSL_CERTFILE": "/c.pem"}, "both ssl_certfile and ssl_keyfile"),
        ({"DROPSTREAM_COMPRESSION": "brotli"}, "compression"),
        ({"DROPSTREAM_SSL_CHECK_HOSTNAME": "perhaps"}, "not a valid bool"),
    ],
)
def test_invalid_settings_raise_config_error(env: dict[str, str], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        ClientConfig.load(env=env)


def test_bad_toml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        ClientConfig.load(env={}, path=tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        ClientConfig.load(env={}, path=_toml(tmp_path, "[kafka\n"))
    with pytest.raises(ConfigError, match="unknown client settings"):
        ClientConfig.load(env={}, path=_toml(tmp_path, '[kafka]\nbootstrap_server = "x:1"\n'))
