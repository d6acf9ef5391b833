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


def _pems(tmp_path: Path) -> tuple[str, str, str]:
    paths = [tmp_path / name for name in ("ca.pem", "c.pem", "k.pem")]
    for p in paths:
        p.write_text("-----BEGIN CERTIFICATE-----\n")
    return tuple(str(p) for p in paths)  # type: ignore[return-value]


def test_cli_flags(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_client_arguments(parser)
    ca, cert, key = _pems(tmp_path)
    args = parser.parse_args(
        [
            "--bootstrap",
            "k1:9093,k2:9093",
            "--security-protocol",
            "SSL",
            "--ssl-cafile",
            ca,
            "--ssl-certfile",
            cert,
            "--ssl-keyfile",
            key,
        ]
    )
    config = ClientConfig.from_args(args)
    kw = config.producer_kwargs()
    assert kw["bootstrap_servers"] == ["k1:9093", "k2:9093"]
    assert kw["security_protocol"] == "SSL"
    assert (kw["ssl_cafile"], kw["ssl_certfile"], kw["ssl_keyfile"]) == (ca, cert, key)
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
        # security options the protocol would silently ignore
        ({"DROPSTREAM_SSL_CAFILE": "/ca.pem"}, "ssl_cafile set but security_protocol is PLAIN"),
        ({"DROPSTREAM_SSL_CHECK_HOSTNAME": "no"}, "ssl_check_hostname set but"),
        (
            {"DROPSTREAM_SASL_USERNAME": "u", "DROPSTREAM_SASL_PASSWORD": "p"},
            "sasl_username, sasl_password set but security_protocol is PLAINTEXT",
        ),
        (
            {"DROPSTREAM_SECURITY_PROTOCOL": "SSL", "DROPSTREAM_SASL_MECHANISM": "PLAIN"},
            "sasl_mechanism set but security_protocol is SSL",
        ),
        (
            {"DROPSTREAM_SECURITY_PROTOCOL": "SSL", "DROPSTREAM_SSL_CAFILE": "/no/ca.pem"},
            "ssl_cafile /no/ca.pem does not exist",
        ),
        (
            {
                "DROPSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "DROPSTREAM_SASL_MECHANISM": "PLAIN",
                "DROPSTREAM_SASL_USERNAME": "u",
                "DROPSTREAM_SASL_PASSWORD": "p",
            },
            "password in clear",
        ),
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


def test_sasl_plain_over_plaintext_only_when_explicitly_allowed() -> None:
    env = {
        "DROPSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "DROPSTREAM_SASL_MECHANISM": "PLAIN",
        "DROPSTREAM_SASL_USERNAME": "u",
        "DROPSTREAM_SASL_PASSWORD": "p",
        "DROPSTREAM_ALLOW_INSECURE_SASL": "yes",
    }
    assert ClientConfig.load(env=env).consumer_kwargs()["sasl_mechanism"] == "PLAIN"
    scram = env | {"DROPSTREAM_SASL_MECHANISM": "SCRAM-SHA-256"}
    del scram["DROPSTREAM_ALLOW_INSECURE_SASL"]
    assert ClientConfig.load(env=scram).security_protocol == "SASL_PLAINTEXT"  # no clear password


def test_the_password_never_shows_in_repr_str_or_logs(caplog) -> None:
    import logging

    from dropstream.broker.clients import KafkaClientError, make_producer
    from dropstream.broker.embedded import free_port

    secret = "Zq8-very-secret-Xw3"
    config = ClientConfig.load(
        env={
            "DROPSTREAM_BOOTSTRAP": f"127.0.0.1:{free_port()}",  # nothing listens
            "DROPSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "DROPSTREAM_SASL_MECHANISM": "SCRAM-SHA-512",
            "DROPSTREAM_SASL_USERNAME": "clinic",
            "DROPSTREAM_SASL_PASSWORD": secret,
        }
    )
    assert secret not in repr(config) and secret not in str(config) and secret not in f"{config}"
    assert "sasl_password='***'" in repr(config) and "clinic" in repr(config)
    assert secret not in repr(config.replace(client_id="x"))
    log = logging.getLogger("dropstream.test")
    with caplog.at_level(logging.DEBUG):
        log.info("config %s", config)
        log.info("config %r", config)
        try:  # kafka-python's own debug logging while it tries to connect
            make_producer(config, max_block_ms=300, bootstrap_timeout_ms=300).close(timeout=0.5)
        except KafkaClientError as exc:
            log.error("%s", exc)
    assert caplog.records and secret not in caplog.text
