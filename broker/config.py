"""Kafka client configuration, in one place.

Every dropstream process that talks to Kafka builds one :class:`ClientConfig`. Values come from,
in decreasing precedence: command-line flags, environment variables ``DROPSTREAM_<FIELD>`` (for
example ``DROPSTREAM_BOOTSTRAP``, ``DROPSTREAM_SASL_PASSWORD``), a TOML file (``--config`` or
``DROPSTREAM_CONFIG``) with a ``[kafka]`` table whose keys are the field names, and the defaults
below. The config turns itself into keyword arguments for kafka-python's producer, consumer and
admin client.

Example ``dropstream.toml``::

    [kafka]
    bootstrap = "kafka-1.example.org:9093,kafka-2.example.org:9093"
    security_protocol = "SASL_SSL"
    ssl_cafile = "/etc/dropstream/ca.pem"
    sasl_mechanism = "SCRAM-SHA-512"
    sasl_username = "clinic-7"
    device_keys = "/etc/dropstream/device-keys.json"

Inconsistent security settings are refused, never silently ignored: TLS options without a
protocol that uses TLS, SASL options without SASL, TLS files that do not exist, and SASL PLAIN
(the password in clear) over an unencrypted connection unless ``allow_insecure_sasl`` is set.
The SASL password never appears in the config's repr, str or logs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dropstream.errors import DropstreamError

ENV_PREFIX = "DROPSTREAM_"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
COMPRESSIONS = ("lz4", "zstd", "gzip", "none")


class ConfigError(DropstreamError):
    """An invalid or inconsistent client setting."""


@dataclass(frozen=True)
class ClientConfig:
    """Connection, security, topic and client-tuning settings (see the module docstring)."""

    bootstrap: str = "localhost:9092"
    client_id: str = "dropstream"
    security_protocol: str = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    allow_insecure_sasl: bool = False
    activations_topic: str = "dropstream.activations"
    alerts_topic: str = "dropstream.alerts"
    dead_letter_topic: str = "dropstream.dead-letters"
    partitions: int = 6
    replication: int = 1
    group_id: str = "dropstream-inference"
    compression: str = "lz4"
    linger_ms: int = 5
    batch_size: int = 256 * 1024
    session_timeout_ms: int = 10_000
    fetch_max_wait_ms: int = 20
    max_poll_records: int = 2000
    #: Device side: this device's key file (default: see dropstream.broker.auth).
    device_key: str | None = None
    #: Service side: the device key store (default: see dropstream.broker.auth).
    device_keys: str | None = None
    #: Service side: accept devices that have no key in the store (their messages unverified).
    allow_unauthenticated: bool = False
    #: Service side: the Ed25519 key that signs alerts.
    alert_key: str | None = None
    #: Readers of alerts: the service's public key(s), comma-separated PEM files.
    alert_public_key: str | None = None

    def __repr__(self) -> str:
        shown = (
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if f.repr and getattr(self, f.name) != f.default
        )
        secret = ", sasl_password='***'" if self.sasl_password else ""
        return f"ClientConfig({', '.join(shown)}{secret})"

    __str__ = __repr__

    def __post_init__(self) -> None:
        if not self.bootstrap.strip():
            raise ConfigError("bootstrap must name at least one host:port")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(f"security_protocol must be one of {SECURITY_PROTOCOLS}")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"compression must be one of {COMPRESSIONS}")
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ConfigError(
                    f"{self.security_protocol} needs sasl_mechanism, one of {SASL_MECHANISMS}"
                )
            if not (self.sasl_username and self.sasl_password):
                raise ConfigError(
                    "SASL needs sasl_username and sasl_password (set the password "
                    "with DROPSTREAM_SASL_PASSWORD rather than a flag)"
                )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ConfigError("a client certificate needs both ssl_certfile and ssl_keyfile")
        self._check_security()
        for name in ("partitions", "replication", "batch_size", "session_timeout_ms"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.linger_ms < 0 or self.fetch_max_wait_ms < 0 or self.max_poll_records < 1:
            raise ConfigError("linger_ms and fetch_max_wait_ms must be >= 0, max_poll_records >= 1")

    def _check_security(self) -> None:
        """Refuse settings that the chosen protocol would silently ignore or make unsafe."""
        protocol = self.security_protocol
        tls = protocol in ("SSL", "SASL_SSL")
        ssl_set = [
            name for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if getattr(self, name)
        ]
        if not self.ssl_check_hostname:
            ssl_set.append("ssl_check_hostname")
        if ssl_set and not tls:
            raise ConfigError(
                f"{', '.join(ssl_set)} set but security_protocol is {protocol}, which does not "
                "use TLS: set security_protocol to SSL or SASL_SSL, or remove the TLS settings"
            )
        for name in ssl_set:
            path = getattr(self, name)
            if isinstance(path, str) and not Path(path).is_file():
                raise ConfigError(f"{name} {path} does not exist or is not a file")
        sasl_set = [
            name
            for name in ("sasl_mechanism", "sasl_username", "sasl_password")
            if getattr(self, name)
        ]
        if sasl_set and not protocol.startswith("SASL"):
            raise ConfigError(
                f"{', '.join(sasl_set)} set but security_protocol is {protocol}, which does not "
                "authenticate: set security_protocol to SASL_SSL (or SASL_PLAINTEXT), or remove "
                "the SASL settings"
            )
        insecure = protocol == "SASL_PLAINTEXT" and self.sasl_mechanism == "PLAIN"
        if insecure and not self.allow_insecure_sasl:
            raise ConfigError(
                "SASL PLAIN over SASL_PLAINTEXT sends the password in clear: use SASL_SSL or a "
                "SCRAM mechanism, or set allow_insecure_sasl (--allow-insecure-sasl) if the "
                "network is trusted"
            )

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        path: str | Path | None = None,
    ) -> ClientConfig:
        """Merge defaults < TOML file < environment < ``overrides`` (flags; ``None`` = unset)."""
        env = os.environ if env is None else env
        path = path or env.get(ENV_PREFIX + "CONFIG")
        values: dict[str, Any] = {}
        if path:
            values.update(_read_toml(Path(path)))
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _coerce(f, raw, f"environment {ENV_PREFIX}{f.name.upper()}")
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key] = value
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown client settings {sorted(unknown)}")
        return cls(**values)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ClientConfig:
        """Build from parsed flags registered by :func:`add_client_arguments`."""
        overrides = {f.name: getattr(args, f.name, None) for f in fields(cls)}
        return cls.load(overrides=overrides, path=getattr(args, "config", None))

    def replace(self, **changes: Any) -> ClientConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ kafka-python kwargs
    def common_kwargs(self) -> dict[str, Any]:
        """Connection and security arguments shared by every kafka-python client."""
        kw: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap.split(",") if s.strip()],
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            kw |= {
                "ssl_cafile": self.ssl_cafile,
                "ssl_certfile": self.ssl_certfile,
                "ssl_keyfile": self.ssl_keyfile,
                "ssl_check_hostname": self.ssl_check_hostname,
            }
        if self.security_protocol.startswith("SASL"):
            kw |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password,
            }
        return kw

    def producer_kwargs(self) -> dict[str, Any]:
        """Producer defaults: acks=all with idempotence, small linger, large batches."""
        return self.common_kwargs() | {
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": self.linger_ms,
            "batch_size": self.batch_size,
            "compression_type": None if self.compression == "none" else self.compression,
            "max_in_flight_requests_per_connection": 5,
            "retries": 2**31 - 1,
            "request_timeout_ms": 30_000,
        }

    def consumer_kwargs(self, group_id: str | None = None) -> dict[str, Any]:
        """Consumer defaults: manual commit after processing, short fetch wait."""
        return self.common_kwargs() | {
            "group_id": group_id or self.group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": max(100, self.session_timeout_ms // 4),
            "max_poll_records": self.max_poll_records,
        }


def _coerce(f: dataclasses.Field[Any], raw: str, where: str) -> Any:
    kind = str(f.type)
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("bool"):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
    except ValueError as exc:
        raise ConfigError(f"{where}: {raw!r} is not a valid {kind}") from exc
    return raw


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    table = data.get("kafka", {})
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [kafka] must be a table")
    return dict(table)


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the Kafka connection flags shared by every command that talks to a broker."""
    g = parser.add_argument_group("Kafka connection (flags > DROPSTREAM_* env > --config TOML)")
    g.add_argument(
        "--bootstrap", help="bootstrap servers host:port[,host:port] (default: localhost:9092)"
    )
    g.add_argument("--config", help="TOML file with a [kafka] table (or DROPSTREAM_CONFIG)")
    g.add_argument("--security-protocol", dest="security_protocol", choices=SECURITY_PROTOCOLS)
    g.add_argument("--ssl-cafile", dest="ssl_cafile", help="CA bundle (PEM) to verify brokers")
    g.add_argument("--ssl-certfile", dest="ssl_certfile", help="client certificate (PEM)")
    g.add_argument("--ssl-keyfile", dest="ssl_keyfile", help="client private key (PEM)")
    g.add_argument("--sasl-mechanism", dest="sasl_mechanism", choices=SASL_MECHANISMS)
    g.add_argument("--sasl-username", dest="sasl_username")
    g.add_argument(
        "--allow-insecure-sasl",
        dest="allow_insecure_sasl",
        action="store_true",
        default=None,
        help="allow SASL PLAIN over an unencrypted connection (the password travels in clear)",
    )
    g.add_argument("--activations-topic", dest="activations_topic")
    g.add_argument("--alerts-topic", dest="alerts_topic")
    g.add_argument("--dead-letter-topic", dest="dead_letter_topic")


def add_service_auth_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the service's message-authentication flags (``dropstream serve``)."""
    g = parser.add_argument_group("message authentication (docs/security.md)")
    g.add_argument(
        "--device-keys",
        dest="device_keys",
        help="device key store from 'dropstream keys provision' (or DROPSTREAM_DEVICE_KEYS; "
        "default $XDG_CONFIG_HOME/dropstream/device-keys.json)",
    )
    g.add_argument(
        "--allow-unauthenticated-devices",
        dest="allow_unauthenticated",
        action="store_true",
        default=None,
        help="also accept devices with no key in the store (old v1 senders); provisioned "
        "devices must still authenticate",
    )
    g.add_argument(
        "--alert-key",
        dest="alert_key",
        help="the service's Ed25519 alert-signing key (or DROPSTREAM_ALERT_KEY; default "
        "$XDG_CONFIG_HOME/dropstream/alert-signing.key, made on first start)",
    )
