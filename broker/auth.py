"""Device authentication of activation messages and signatures of alerts.

Devices -> service: **HMAC-SHA256** with one 32-byte secret per device. The device holds its
secret in a key file (:class:`DeviceKey`); the service holds every device's secret in a key store
file (:class:`DeviceKeys`). Every version-2 or 3 activation message ends with a tag,
``HMAC(secret, DOMAIN || len(key) || key || value-without-tag)``, so the tag covers the Kafka key
and every byte of the message: all 32 bytes of the HMAC-SHA256 in version 2, its first 16 in
version 3 (a truncated HMAC, RFC 2104 section 5: at least half the output and 80 bits; a
forgery still needs about 2^128 tries, each one a message the service sees and dead-letters).
The service calls :meth:`DeviceKeys.verify` (or :meth:`DeviceKeys.check_batch`) on each record
*before anything else*; it returns the device id or raises :class:`AuthError` (dead letter
``unauthenticated``).

Service -> alert readers: **Ed25519** signatures. The service signs each alert with its private
key (:class:`AlertSigner`) and sends the signature in the Kafka headers ``dropstream.signature``
and ``dropstream.signer``; readers hold only the public key (:class:`AlertVerifier`), so a reader
of alerts cannot forge one.

Why a MAC for devices and a signature for alerts: a device message has exactly one verifier,
the service, which is trusted with the alerts anyway; HMAC verifies in about 2 us where Ed25519
takes about 130 us (the service handles tens of thousands of windows per second), and the only
extra power a stolen key store gives is forging device windows, which whoever holds the service
host can do to the alerts directly. Alerts have many readers (operators, dashboards, paging), and
none of them must be able to forge one, hence public-key signatures. See docs/security.md.

Key files are JSON (device key, key store) or PEM (alert keys); private files are created with
mode 0600 and refused when group or others can read them.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import os
import secrets
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dropstream.broker.wire import (
    HEADER_BYTES_V2,
    MAGIC,
    WireFormatError,
    device_id_bytes,
    trailer_bytes,
)
from dropstream.errors import DropstreamError

#: Bytes of a device secret.
SECRET_BYTES = 32
#: Dead-letter reason of a message that fails :meth:`DeviceKeys.verify`.
REASON = "unauthenticated"
#: Kafka headers that carry an alert's signature and the id of the key that made it.
SIGNATURE_HEADER = "dropstream.signature"
SIGNER_HEADER = "dropstream.signer"

_MAC_DOMAIN = b"dropstream.activation.v2\x00"
_ALERT_DOMAIN = b"dropstream.alert.v1\x00"
_STORE_FORMAT = "dropstream.device-keys"
_KEY_FORMAT = "dropstream.device-key"


class AuthError(DropstreamError):
    """A message or alert that is not authentic, or a key file that cannot be used."""


#: Schema versions that end with an authentication tag.
_TAGGED = (2, 3)


def config_dir() -> Path:
    """Default folder of dropstream's key files (``$XDG_CONFIG_HOME/dropstream``)."""
    root = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(root) / "dropstream"


def default_store_path() -> Path:
    """Default device key store of the service."""
    return config_dir() / "device-keys.json"


def default_device_key_path(device_id: str) -> Path:
    """Default key file of device ``device_id`` (``/`` in ids becomes ``_``)."""
    return config_dir() / "devices" / f"{device_id.replace('/', '_')}.key"


def default_alert_key_path() -> Path:
    """Default private alert-signing key of the service (the public key is ``*.pub``)."""
    return config_dir() / "alert-signing.key"


# --------------------------------------------------------------------------- files
def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` atomically to ``path`` with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_private(path: Path, what: str, hint: str = "") -> bytes:
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuthError(
                f"{what} {path} is readable by other users; run 'chmod 600 {path}' (and replace "
                "the key if it may have leaked)"
            )
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise AuthError(f"{what} {path} does not exist{hint}") from exc
    except OSError as exc:
        raise AuthError(f"cannot read {what} {path}: {exc}") from exc


def _mac_input(key: bytes) -> bytes:
    return _MAC_DOMAIN + bytes([len(key)]) + key


def _fingerprint(secret: bytes) -> str:
    """A short public id of a secret (not reversible) for listings and logs."""
    return hashlib.sha256(b"dropstream.key-id\x00" + secret).hexdigest()[:16]


# --------------------------------------------------------------------------- device side
@dataclass(frozen=True)
class DeviceKey:
    """One device's secret, as held by the device (never shown in reprs).

    Attributes
    ----------
    device_id : str
        The device (the Kafka key of its messages).
    secret : bytes
        32 random bytes shared with the service's key store.
    """

    device_id: str
    secret: bytes = field(repr=False)

    @classmethod
    def generate(cls, device_id: str) -> DeviceKey:
        """A fresh random key (e.g. an ephemeral demo device)."""
        if not 1 <= len(device_id.encode("utf-8")) <= 255:
            raise AuthError("device id must be 1..255 UTF-8 bytes")
        return cls(device_id, os.urandom(SECRET_BYTES))

    @property
    def key_id(self) -> str:
        """Public fingerprint of the secret (matches ``dropstream keys list``)."""
        return _fingerprint(self.secret)

    def sign(self, value: bytes) -> bytes:
        """``value`` (a version-2 or 3 message from ``encode_activation``) with its tag filled in.

        The tag covers the Kafka key (this device's id) and every byte before the tag.
        """
        if len(value) < 6 or value[:4] != MAGIC or value[4] not in _TAGGED:
            raise AuthError("only version-2 and 3 activation messages can be signed")
        n = trailer_bytes(value[4])
        if len(value) < 6 + n:
            raise AuthError("too short to hold an authentication tag")
        body = value[:-n]
        h = hmac.HMAC(self.secret, hashes.SHA256())
        h.update(_mac_input(self.device_id.encode("utf-8")))
        h.update(body)
        return body + h.finalize()[:n]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the key file (mode 0600); returns its path."""
        path = Path(path)
        body = {"format": _KEY_FORMAT, "device_id": self.device_id, "secret": self.secret.hex()}
        _write_private(path, (json.dumps(body, indent=1) + "\n").encode())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DeviceKey:
        """Read a key file written by ``dropstream keys provision``.

        Raises
        ------
        AuthError
            If it is missing, readable by others, or not a device key.
        """
        path = Path(path)
        raw = _read_private(
            path,
            "device key file",
            "; make one with 'dropstream keys provision --device-id ID' where the service's key "
            "store is, copy it to this device and pass --device-key",
        )
        try:
            body = json.loads(raw)
            assert body["format"] == _KEY_FORMAT
            secret = bytes.fromhex(body["secret"])
            assert len(secret) == SECRET_BYTES
            return cls(str(body["device_id"]), secret)
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            raise AuthError(
                f"{path} is not a dropstream device key; make one with 'dropstream keys "
                "provision --device-id ID'"
            ) from exc


# --------------------------------------------------------------------------- service side
class DeviceKeys:
    """The service's store of device secrets; verifies activation messages.

    Parameters
    ----------
    secrets : mapping of str to bytes
        Device id -> secret.
    allow_unauthenticated : bool
        Accept messages from devices that have no key in the store (version 1 or 2, tag not
        checked). Devices that have a key must always send a valid version-2 tag.
    previous : mapping of str to (bytes, float), optional
        Device id -> (its previous secret, Unix time until which that secret is still
        accepted): after a rotation, windows the device signed with its old key and still had
        spooled are accepted until then.

    Examples
    --------
    >>> keys = DeviceKeys.load("device-keys.json")          # doctest: +SKIP
    >>> device_id = keys.verify(record.key, record.value)  # doctest: +SKIP
    """

    def __init__(
        self,
        secrets: dict[str, bytes],
        allow_unauthenticated: bool = False,
        previous: dict[str, tuple[bytes, float]] | None = None,
    ) -> None:
        self.allow_unauthenticated = bool(allow_unauthenticated)
        self._macs = {d.encode("utf-8"): _primed_mac(d, s) for d, s in secrets.items()}
        self._previous = {
            d.encode("utf-8"): (_primed_mac(d, s), float(until))
            for d, (s, until) in (previous or {}).items()
        }

    def __repr__(self) -> str:
        return (
            f"DeviceKeys({len(self._macs)} devices, "
            f"allow_unauthenticated={self.allow_unauthenticated})"
        )

    def __len__(self) -> int:
        return len(self._macs)

    def __contains__(self, device_id: str) -> bool:
        return device_id.encode("utf-8") in self._macs

    # -- verification ------------------------------------------------------------------------
    def verify(self, key: bytes | None, value: bytes | None) -> str:
        """Check one Kafka record; returns the device id.

        Checks, in order: it is an activation message; the Kafka key equals the device id
        inside it (a version-3 window that sends its stream block by reference has none: the
        decoder resolves the block and the service compares its device id with the key); the
        device has a key (or unauthenticated devices are allowed); a device
        with a key sent version 2 with a tag that matches the key and the value.

        Raises
        ------
        AuthError
            With the reason; dead-letter the record as ``unauthenticated``.
        """
        if not isinstance(value, (bytes, bytearray)) or len(value) < 5 or value[:4] != MAGIC:
            raise AuthError("not a dropstream activation message")
        if not key:
            raise AuthError("the record has no Kafka key; the key must be the device id")
        try:
            inner = device_id_bytes(value)
        except WireFormatError as exc:
            raise AuthError(str(exc)) from exc
        if inner is not None and inner != key:  # None: by reference, checked once resolved
            raise AuthError(
                f"Kafka key {bytes(key)[:64]!r} is not the device id in the message "
                f"({inner[:64]!r})"
            )
        mac = self._macs.get(bytes(key))
        if mac is None:
            if self.allow_unauthenticated:
                return _device_id(key)
            raise AuthError(
                f"device {bytes(key)[:64]!r} has no key in the store; provision it with "
                "'dropstream keys provision' (or allow unauthenticated devices)"
            )
        version = value[4]
        if version not in _TAGGED:
            raise AuthError(
                f"schema version {version} carries no authentication tag, and device "
                f"{_device_id(key)!r} has a key: upgrade the device"
            )
        n = trailer_bytes(version)
        if len(value) < (HEADER_BYTES_V2 if version == 2 else 6) + n:
            raise AuthError("truncated before the authentication tag")
        if _tag_ok(mac, value, n):
            return _device_id(key)
        old = self._previous.get(bytes(key))
        if old is not None and time.time() < old[1] and _tag_ok(old[0], value, n):
            return _device_id(key)  # signed before a rotation, within its grace period
        raise AuthError(
            f"authentication tag of device {_device_id(key)!r} does not match: forged, "
            "altered, or signed with another key"
        )

    def check_batch(
        self, keys: Sequence[bytes | None], values: Sequence[bytes | None]
    ) -> list[tuple[int, str]]:
        """Verify many records; returns ``(row, reason)`` for each one refused, in order.

        The reason starts with ``"unauthenticated: "`` (the dead-letter reason).
        """
        rejected = []
        verify = self.verify
        for row, (key, value) in enumerate(zip(keys, values, strict=True)):
            try:
                verify(key, value)
            except AuthError as exc:
                rejected.append((row, f"{REASON}: {exc}"))
        return rejected

    # -- the store file ----------------------------------------------------------------------
    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, allow_unauthenticated: bool = False
    ) -> DeviceKeys:
        """Read the key store (default :func:`default_store_path`).

        A missing store is an error unless ``allow_unauthenticated`` (then every device is
        unauthenticated).

        Raises
        ------
        AuthError
            If the store is missing, readable by others, or malformed.
        """
        path = Path(path) if path else default_store_path()
        if not path.exists() and allow_unauthenticated:
            return cls({}, True)
        if not path.exists():
            raise AuthError(
                f"no device key store at {path}: provision devices with 'dropstream keys "
                "provision --device-id ID' (or point --device-keys at the store; "
                "--allow-unauthenticated-devices accepts devices without keys)"
            )
        entries = _read_store(path)
        previous = {
            d: (bytes.fromhex(e["previous"]), float(e["previous_until"]))
            for d, e in entries.items()
            if "previous" in e
        }
        secrets = {d: bytes.fromhex(e["secret"]) for d, e in entries.items()}
        return cls(secrets, allow_unauthenticated, previous)

    @staticmethod
    def provision(
        device_id: str,
        path: str | os.PathLike[str] | None = None,
        replace: bool = False,
        grace_s: float = 7 * 86400.0,
    ) -> DeviceKey:
        """Make a new secret for ``device_id``, add it to the store and return it.

        Parameters
        ----------
        device_id : str
        path : path-like, optional
            The store (created if missing; default :func:`default_store_path`).
        replace : bool
            Replace an existing key (rotation: the device must get the new key file).
        grace_s : float
            After a rotation, the old key stays accepted this many seconds (default 7 days),
            so windows the device signed with it and still has spooled are not refused.

        Raises
        ------
        AuthError
            If the device already has a key and ``replace`` is false.
        """
        return DeviceKeys.provision_many([device_id], path, replace, grace_s)[0]

    @staticmethod
    def provision_many(
        device_ids: Sequence[str],
        path: str | os.PathLike[str] | None = None,
        replace: bool = False,
        grace_s: float = 7 * 86400.0,
    ) -> list[DeviceKey]:
        """:meth:`provision` for many devices with one read and one write of the store.

        All or nothing: if any device already has a key (and ``replace`` is false), or an id is
        repeated, nothing is written. Parameters as :meth:`provision`; returns the keys in the
        order of ``device_ids``.
        """
        path = Path(path) if path else default_store_path()
        entries = _read_store(path) if path.exists() else {}
        if len(set(device_ids)) != len(device_ids):
            raise AuthError("a device id is repeated; give each device once")
        for device_id in device_ids:
            if device_id in entries and not replace:
                raise AuthError(
                    f"device {device_id!r} already has a key in {path}; "
                    "pass --replace to rotate it"
                )
        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        keys = []
        for device_id in device_ids:
            key = DeviceKey.generate(device_id)
            entry: dict[str, Any] = {"secret": key.secret.hex(), "created": now}
            if device_id in entries and grace_s > 0:
                entry |= {
                    "previous": entries[device_id]["secret"],
                    "previous_until": time.time() + grace_s,
                }
            entries[device_id] = entry
            keys.append(key)
        _write_store(path, entries)
        return keys

    @staticmethod
    def revoke(device_id: str, path: str | os.PathLike[str] | None = None) -> None:
        """Remove ``device_id``'s key from the store (a running service reloads on restart)."""
        path = Path(path) if path else default_store_path()
        entries = _read_store(path)
        if entries.pop(device_id, None) is None:
            raise AuthError(f"device {device_id!r} has no key in {path}")
        _write_store(path, entries)

    @staticmethod
    def listing(path: str | os.PathLike[str] | None = None) -> list[tuple[str, str, str]]:
        """``(device id, created, key id)`` of every device in the store, by device id."""
        path = Path(path) if path else default_store_path()
        entries = _read_store(path)
        return [
            (d, e.get("created", ""), _fingerprint(bytes.fromhex(e["secret"])))
            for d, e in sorted(entries.items())
        ]


def _primed_mac(device_id: str, secret: bytes) -> hmac.HMAC:
    """An HMAC keyed with ``secret`` that has already absorbed the domain and the Kafka key;
    made once per device and copied per message."""
    h = hmac.HMAC(secret, hashes.SHA256())
    h.update(_mac_input(device_id.encode("utf-8")))
    return h


def _tag_ok(mac: hmac.HMAC, value: bytes, n: int) -> bool:
    """Whether the last ``n`` bytes of ``value`` are the (truncated to ``n`` bytes: fixed by the
    schema version, never by the sender) HMAC of the bytes before them; compared in constant
    time."""
    h = mac.copy()
    h.update(value[:-n])
    return secrets.compare_digest(h.finalize()[:n], value[-n:])


def _device_id(key: bytes) -> str:
    try:
        return bytes(key).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AuthError("the Kafka key is not UTF-8") from exc


def _read_store(path: Path) -> dict[str, dict[str, Any]]:
    raw = _read_private(path, "device key store")
    try:
        body = json.loads(raw)
        assert body["format"] == _STORE_FORMAT
        devices = body["devices"]
        for entry in devices.values():
            assert len(bytes.fromhex(entry["secret"])) == SECRET_BYTES
            if "previous" in entry:
                assert len(bytes.fromhex(entry["previous"])) == SECRET_BYTES
                float(entry["previous_until"])
        return dict(devices)
    except (ValueError, KeyError, TypeError, AttributeError, AssertionError) as exc:
        raise AuthError(f"{path} is not a valid dropstream device key store") from exc


def _write_store(path: Path, entries: dict[str, dict[str, Any]]) -> None:
    body = {"format": _STORE_FORMAT, "version": 1, "devices": dict(sorted(entries.items()))}
    _write_private(path, (json.dumps(body, indent=1) + "\n").encode())


# --------------------------------------------------------------------------- alerts
def _alert_input(key: bytes | None, value: bytes) -> bytes:
    key = key or b""
    return _ALERT_DOMAIN + len(key).to_bytes(2, "little") + key + bytes(value)


def _signer_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class AlertSigner:
    """The service's Ed25519 alert-signing key.

    Parameters
    ----------
    private_key : Ed25519PrivateKey
    """

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.signer_id = _signer_id(private_key.public_key())

    def __repr__(self) -> str:
        return f"AlertSigner(signer_id={self.signer_id!r})"

    def headers(self, key: bytes | None, value: bytes) -> list[tuple[str, bytes]]:
        """Kafka headers to send with the alert ``value`` under ``key`` (its signature)."""
        signature = self._key.sign(_alert_input(key, value))
        return [
            (SIGNATURE_HEADER, base64.b64encode(signature)),
            (SIGNER_HEADER, self.signer_id.encode()),
        ]

    def public_pem(self) -> bytes:
        """The public key readers need (PEM)."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> AlertSigner:
        """Read a private key written by :meth:`create` (default :func:`default_alert_key_path`)."""
        path = Path(path) if path else default_alert_key_path()
        raw = _read_private(
            path, "alert-signing key", "; make one with 'dropstream keys alert-key'"
        )
        try:
            key = serialization.load_pem_private_key(raw, password=None)
        except (ValueError, TypeError) as exc:
            raise AuthError(f"{path} is not a PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise AuthError(f"{path} is not an Ed25519 key; make one with 'dropstream keys alert'")
        return cls(key)

    @classmethod
    def create(
        cls, path: str | os.PathLike[str] | None = None, replace: bool = False
    ) -> AlertSigner:
        """Generate a key; write it to ``path`` (0600) and its public key to ``path.pub``."""
        path = Path(path) if path else default_alert_key_path()
        if path.exists() and not replace:
            raise AuthError(f"{path} exists; pass --replace to make a new alert-signing key")
        signer = cls(Ed25519PrivateKey.generate())
        pem = signer._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_private(path, pem)
        path.with_suffix(".pub").write_bytes(signer.public_pem())
        return signer

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str] | None = None) -> AlertSigner:
        """:meth:`load`, or :meth:`create` when there is no key at ``path`` yet."""
        path = Path(path) if path else default_alert_key_path()
        return cls.load(path) if path.exists() else cls.create(path)


class AlertVerifier:
    """Checks alert signatures against the service's public key(s).

    Parameters
    ----------
    public_keys : iterable of Ed25519PublicKey
        Every key whose alerts are trusted (several during a key rotation).
    """

    def __init__(self, public_keys: Iterable[Ed25519PublicKey]) -> None:
        self._keys = {_signer_id(k): k for k in public_keys}

    def __len__(self) -> int:
        return len(self._keys)

    def verify(
        self, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] | None
    ) -> bool:
        """Whether the alert carries a valid signature of a trusted key."""
        h = dict(headers or ())
        try:
            public = self._keys[bytes(h[SIGNER_HEADER]).decode()]
            signature = base64.b64decode(h[SIGNATURE_HEADER], validate=True)
            public.verify(signature, _alert_input(key, value))
        except (KeyError, ValueError, UnicodeDecodeError, InvalidSignature):
            return False
        return True

    @classmethod
    def load(cls, paths: Iterable[str | os.PathLike[str]]) -> AlertVerifier:
        """Read public keys (PEM); a private key file is accepted too (its public half)."""
        keys = []
        for p in paths:
            p = Path(p)
            try:
                raw = p.read_bytes()
            except OSError as exc:
                raise AuthError(f"cannot read the alert public key {p}: {exc}") from exc
            try:
                if b"PRIVATE KEY" in raw:
                    key: Any = serialization.load_pem_private_key(raw, None).public_key()
                else:
                    key = serialization.load_pem_public_key(raw)
            except (ValueError, TypeError) as exc:
                raise AuthError(f"{p} is not a PEM public key") from exc
            if not isinstance(key, Ed25519PublicKey):
                raise AuthError(f"{p} is not an Ed25519 public key")
            keys.append(key)
        return cls(keys)
