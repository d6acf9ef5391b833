"""``dropstream keys``: provision, list and revoke device keys; make the alert-signing key.

Run it where the service's key store lives (the service host or an admin machine)::

    dropstream keys provision --device-id clinic-7/cap-3     # adds it to the store, writes
                                                            # the device's key file
    dropstream keys list
    dropstream keys provision --device-id clinic-7/cap-3 --replace   # rotate (old key: 7 days)
    dropstream keys revoke --device-id clinic-7/cap-3
    dropstream keys alert-key                               # the service's Ed25519 key pair

Copy the device's key file to the device (mode 0600) and start ``dropstream connect
--device-key FILE``; give the alert public key (``*.pub``) to whoever reads alerts. The store
and the device key files hold secrets: keep them 0600 and off shared folders.
"""

from __future__ import annotations

import argparse

HELP = "provision, list or revoke device keys; make the service's alert-signing key"


def configure(parser: argparse.ArgumentParser) -> None:
    """Register the subcommands of ``dropstream keys``."""
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    store_help = (
        "the service's device key store (or DROPSTREAM_DEVICE_KEYS; default "
        "$XDG_CONFIG_HOME/dropstream/device-keys.json)"
    )
    p = sub.add_parser("provision", help="make a device key, add it to the store, write its file")
    p.add_argument("--device-id", required=True, help="the device's id (its Kafka key)")
    p.add_argument("--device-keys", dest="device_keys", help=store_help)
    p.add_argument(
        "--out",
        help="where to write the device's key file (default "
        "$XDG_CONFIG_HOME/dropstream/devices/<device-id>.key)",
    )
    p.add_argument("--replace", action="store_true", help="rotate an existing device's key")
    p.add_argument(
        "--grace-hours",
        type=float,
        default=168.0,
        help="after --replace, keep accepting the old key this long, for windows the device "
        "still has spooled (default 168 = 7 days; 0: refuse them at once)",
    )
    p = sub.add_parser("list", help="list the devices in the store (ids and key ids, no secrets)")
    p.add_argument("--device-keys", dest="device_keys", help=store_help)
    p = sub.add_parser("revoke", help="remove a device's key (restart serve to apply)")
    p.add_argument("--device-id", required=True)
    p.add_argument("--device-keys", dest="device_keys", help=store_help)
    p = sub.add_parser("alert-key", help="make the service's Ed25519 alert-signing key pair")
    p.add_argument(
        "--out",
        help="private key file; the public key goes beside it as *.pub (default "
        "$XDG_CONFIG_HOME/dropstream/alert-signing.key)",
    )
    p.add_argument("--replace", action="store_true", help="replace an existing key")


def run(args: argparse.Namespace) -> int:
    """Run one ``dropstream keys`` action."""
    from pathlib import Path

    from dropstream.broker.auth import (
        AlertSigner,
        DeviceKeys,
        default_alert_key_path,
        default_device_key_path,
        default_store_path,
    )
    from dropstream.broker.config import ClientConfig

    if args.keys_command == "alert-key":
        path = Path(args.out) if args.out else default_alert_key_path()
        signer = AlertSigner.create(path, replace=args.replace)
        print(
            f"alert-signing key {signer.signer_id}: private {path} (serve --alert-key), "
            f"public {path.with_suffix('.pub')} (alerts --alert-public-key)"
        )
        return 0
    config = ClientConfig.load(overrides={"device_keys": args.device_keys})
    store = Path(config.device_keys) if config.device_keys else default_store_path()
    if args.keys_command == "provision":
        out = Path(args.out) if args.out else default_device_key_path(args.device_id)
        key = DeviceKeys.provision(
            args.device_id, store, replace=args.replace, grace_s=args.grace_hours * 3600
        )
        key.save(out)
        print(f"device {args.device_id}: key {key.key_id} added to {store}")
        if args.replace and args.grace_hours > 0:
            print(f"the old key stays accepted for {args.grace_hours:g} h (restart serve)")
        print(
            f"device key file {out}: copy it to the device (mode 0600) and run "
            f"'dropstream connect --device-id {args.device_id} --device-key FILE ...'"
        )
    elif args.keys_command == "list":
        rows = DeviceKeys.listing(store)
        print(f"{'device':<32} {'key id':<16} created   ({len(rows)} in {store})")
        for device_id, created, key_id in rows:
            print(f"{device_id:<32} {key_id:<16} {created}")
    else:
        DeviceKeys.revoke(args.device_id, store)
        print(f"device {args.device_id}: key removed from {store}; restart serve to apply")
    return 0
