"""Entities to send: a seeded generator of NetBox-like entities, and a JSON Lines reader.

`generate_entities` is pure and deterministic: the same (count, seed, duplicate_ratio) gives the
same items, byte for byte. It walks sites, their devices, the devices' interfaces and the
interfaces' IP addresses, parents first. Items are in the diode shape NetBox's diode plugin
reads (`{"object_type": "dcim.device", "entity": {"device": {…}}}`), and every reference is a
nested object carrying what the plugin needs to find the referenced object, or to create it
when the reference arrives first (a device's site, device type and role; an interface's
device; an IP address's `assigned_object_interface`). So the data applies cleanly to NetBox and
to the reference target, in any order. Every distinct object has a distinct natural key:

    dcim.site        name (slug unique too)
    dcim.device      site + name   (device names are also unique across sites)
    dcim.interface   device + name
    ipam.ipaddress   address

Exactly round(count * duplicate_ratio) of the items are repeats of an earlier item (a recent
one: producers re-send what they just saw). About a fifth of the objects carry a `metadata`
key whose `collected_at` differs on every send; the dedup hash ignores `metadata`, so their
repeats are still duplicates (and the plugin ignores it too).
"""

from __future__ import annotations

import itertools
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from streams.models import EntityIn

METADATA_SHARE = 0.2
# Repeats are drawn from the most recent distinct objects, so memory stays bounded.
_REPEAT_WINDOW = 4096
# A fixed epoch keeps `collected_at` deterministic; items are spaced about a second apart.
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
_SOURCES = ("netbox-discovery", "snmp-poller", "lldp-sweep", "csv-import")
_SERIAL_CHARS = string.ascii_uppercase + string.digits

# (code, city, region): site i is city i % len, numbered i // len + 1.
_CITIES = (
    ("ams", "Amsterdam", "eu-west"), ("fra", "Frankfurt", "eu-central"), ("lon", "London", "eu-west"),
    ("iad", "Ashburn", "us-east"), ("nyc", "New York", "us-east"), ("sfo", "San Francisco", "us-west"),
    ("gru", "São Paulo", "sa-east"), ("sin", "Singapore", "ap-southeast"), ("syd", "Sydney", "ap-southeast"),
    ("tyo", "Tokyo", "ap-northeast"),
)


@dataclass(frozen=True)
class _DeviceType:
    manufacturer: str
    model: str
    port: str  # interface name pattern; {n} counts from 1
    interface_type: str
    mtu: int


_CATALOG: dict[str, tuple[_DeviceType, ...]] = {
    "spine": (
        _DeviceType("Arista", "DCS-7280CR3-32P4", "Ethernet{n}/1", "100gbase-x-qsfp28", 9216),
        _DeviceType("Juniper", "QFX5210-64C", "et-0/0/{n}", "100gbase-x-qsfp28", 9216),
    ),
    "leaf": (
        _DeviceType("Arista", "DCS-7050SX3-48YC8", "Ethernet{n}", "25gbase-x-sfp28", 9216),
        _DeviceType("Cisco", "N9K-C93180YC-FX", "Ethernet1/{n}", "25gbase-x-sfp28", 9216),
    ),
    "server": (
        _DeviceType("Dell", "PowerEdge R650", "eno{n}", "10gbase-x-sfpp", 9000),
        _DeviceType("HPE", "ProLiant DL360 Gen10", "ens{n}f0", "25gbase-x-sfp28", 9000),
    ),
    "firewall": (_DeviceType("Palo Alto Networks", "PA-3220", "ethernet1/{n}", "10gbase-x-sfpp", 1500),),
    "router": (_DeviceType("Juniper", "MX204", "xe-0/1/{n}", "10gbase-x-sfpp", 1500),),
}
_ROLE_WEIGHTS = {"leaf": 4.0, "server": 4.0, "spine": 1.0, "firewall": 0.5, "router": 0.5}
_DESCRIPTIONS = ("uplink", "downlink", "server port", "management", "peer link")


def _weighted(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(tuple(weights), weights=tuple(weights.values()))[0]


def _address(host: int) -> str:
    """The host-th usable address of 10.0.0.0/8, counted in /24s that skip .0 and .255."""
    x, rest = divmod(host, 256 * 254)
    if x > 255:
        raise ValueError("generate_entities: more IP addresses than 10.0.0.0/8 holds")
    y, z = divmod(rest, 254)
    return f"10.{x}.{y}.{z + 1}/24"


def _site(rng: random.Random, index: int, namespace: str) -> dict[str, Any]:
    code, city, region = _CITIES[index % len(_CITIES)]
    number = index // len(_CITIES) + 1
    site: dict[str, Any] = {
        "name": f"{namespace.upper()}{' ' if namespace else ''}{city} DC{number}",
        "slug": f"{namespace}{'-' if namespace else ''}{code}-dc{number}",
        "status": _weighted(rng, {"active": 0.85, "planned": 0.1, "staging": 0.05}),
    }
    if rng.random() < 0.8:
        site["region"] = {"name": region}
    if rng.random() < 0.5:
        site["description"] = f"{city} data centre {number}"
    return site


def _objects(rng: random.Random, namespace: str, first_host: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """An endless walk: a site, then each of its devices followed by their interfaces and IPs."""
    hosts = first_host
    for site_index in itertools.count():
        site = _site(rng, site_index, namespace)
        slug = site["slug"]
        site_ref = {"name": site["name"], "slug": slug}
        yield "dcim.site", {"site": site}
        per_role: dict[str, int] = {}
        for _ in range(rng.randint(7, 13)):
            role = _weighted(rng, _ROLE_WEIGHTS)
            per_role[role] = per_role.get(role, 0) + 1
            kind = rng.choice(_CATALOG[role])
            name = f"{slug}-{role}{per_role[role]:02d}"
            # Enough to create the device if a reference to it is applied before it is.
            device_ref = {
                "name": name,
                "site": site_ref,
                "device_type": {"model": kind.model, "manufacturer": {"name": kind.manufacturer}},
                "role": {"name": role},
            }
            yield "dcim.device", {"device": {
                **device_ref,
                "status": _weighted(rng, {"active": 0.85, "planned": 0.05, "staged": 0.05,
                                          "offline": 0.03, "failed": 0.02}),
                "serial": "".join(rng.choices(_SERIAL_CHARS, k=11)),
            }}
            for port in range(1, rng.randint(2, 6) + 1):
                interface: dict[str, Any] = {
                    "name": kind.port.format(n=port),
                    "device": device_ref,
                    "type": kind.interface_type,
                    "enabled": rng.random() < 0.9,
                    "mtu": kind.mtu,
                }
                if rng.random() < 0.3:
                    interface["description"] = rng.choice(_DESCRIPTIONS)
                yield "dcim.interface", {"interface": interface}
                if rng.random() < 0.9:
                    address: dict[str, Any] = {
                        "address": _address(hosts),
                        "status": _weighted(rng, {"active": 0.9, "reserved": 0.05, "deprecated": 0.05}),
                    }
                    hosts += 1
                    if rng.random() < 0.95:
                        address["assigned_object_interface"] = {
                            "name": interface["name"], "type": kind.interface_type, "device": device_ref,
                        }
                    yield "ipam.ipaddress", {"ip_address": address}


def _metadata(rng: random.Random, position: int) -> dict[str, str]:
    collected = _EPOCH + timedelta(seconds=position + rng.random())
    return {
        "source": rng.choice(_SOURCES),
        "collected_at": collected.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


def generate_entities(count: int, *, seed: int = 0, duplicate_ratio: float = 0.1, namespace: str = "",
                      first_host: int = 0) -> Iterator[dict[str, Any]]:
    """Yield `count` items `{"object_type", "entity"}`; see the module docstring.

    `namespace` (lowercase letters and digits) prefixes every site's name and slug, and so
    every device name, and `first_host` moves the IP addresses along 10.0.0.0/8: two calls with
    other namespaces and disjoint host ranges describe disjoint objects in one target (NetBox
    keeps what was applied, so each benchmark or test run needs objects of its own).
    """
    if count < 0:
        raise ValueError(f"count must be at least 0, got {count}")
    if not 0 <= duplicate_ratio < 1:
        raise ValueError(f"duplicate_ratio must be in [0, 1), got {duplicate_ratio}")
    if namespace and not (namespace.isascii() and namespace.isalnum() and namespace.islower()):
        raise ValueError(f"namespace must be lowercase letters and digits, got {namespace!r}")
    # Separate streams, so the objects of a seed do not change with the duplicate ratio.
    objects = _objects(random.Random(seed), namespace, first_host)
    repeats = random.Random(f"repeats-{seed}")
    metadata = random.Random(f"metadata-{seed}")
    # (object_type, entity without metadata as JSON, carries metadata) of recent objects.
    recent: list[tuple[str, bytes, bool]] = []
    duplicates_left = min(round(count * duplicate_ratio), max(count - 1, 0))
    fresh = 0
    for position in range(count):
        # Selection sampling (Knuth's algorithm S): exactly `duplicates_left` of the positions
        # after the first are picked, each remaining position with the same chance.
        if position > 0 and repeats.random() * (count - position) < duplicates_left:
            duplicates_left -= 1
            object_type, encoded, with_metadata = repeats.choice(recent)
            entity = orjson.loads(encoded)
        else:
            object_type, entity = next(objects)
            with_metadata = metadata.random() < METADATA_SHARE
            slot = (object_type, orjson.dumps(entity), with_metadata)
            if len(recent) < _REPEAT_WINDOW:
                recent.append(slot)
            else:
                recent[fresh % _REPEAT_WINDOW] = slot
            fresh += 1
        if with_metadata:
            data = next(iter(entity.values()))
            data["metadata"] = _metadata(metadata, position)
        yield {"object_type": object_type, "entity": entity}


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the `{"object_type", "entity"}` item on each non-blank line of a JSON Lines file.

    A bad line raises ValueError naming the file and the line number.
    """
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                item = EntityIn.model_validate(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {number}: not valid JSON: {exc}") from None
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"]) or "item"
                raise ValueError(
                    f"{path}, line {number}: {where}: {first['msg']} "
                    '(each line must be {"object_type": "…", "entity": {…}})'
                ) from None
            yield {"object_type": item.object_type, "entity": item.entity}
