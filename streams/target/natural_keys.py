"""Natural keys of the reference target: which fields identify an object of a given type.

The reference target has no database ids in its input (producers send snapshots), so it finds
the existing object by the values at a few dotted paths of the entity's data (the object under
the entity key), as NetBox's diode plugin matches objects: a site by its name, a device by its
site and name, an interface by its device and name, an IP address by its address, a device
type by its manufacturer and model; other types by `name`. References are nested objects named
by their own natural keys, so `device.site.name` is the name of the device's site. The key is
stored as the JSON text of those values, which is unambiguous (no separator inside a value can
make two keys collide) and cheap to build.

Pure: no I/O, no state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from streams.pipeline.netbox_types import lower_camel

KEY_PATHS: Mapping[str, tuple[str, ...]] = {
    "dcim.site": ("name",),
    "dcim.device": ("site.name", "name"),
    "dcim.interface": ("device.site.name", "device.name", "name"),
    "ipam.ipaddress": ("address",),
    "ipam.prefix": ("prefix",),
    "dcim.devicetype": ("manufacturer.name", "model"),
    "dcim.moduletype": ("manufacturer.name", "model"),
    "dcim.macaddress": ("mac_address",),
    "ipam.asn": ("asn",),
    "circuits.circuit": ("cid",),
}
DEFAULT_KEY_PATHS: tuple[str, ...] = ("name",)

_MISSING = object()
_SCALARS = (str, int, float, bool)


class NaturalKeyError(ValueError):
    """The entity lacks a key field, or the field is not a scalar: a permanent plan error."""

    def __init__(self, path: str) -> None:
        super().__init__(f"missing natural key field {path}")
        self.path = path


def key_paths(object_type: str) -> tuple[str, ...]:
    return KEY_PATHS.get(object_type, DEFAULT_KEY_PATHS)


def _lookup(entity: Mapping[str, Any], path: str) -> Any:
    value: Any = entity
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return _MISSING
        # Field names come in either protoJSON spelling, as the plugin accepts them.
        found = value.get(part, _MISSING)
        value = value.get(lower_camel(part), _MISSING) if found is _MISSING else found
        if value is _MISSING:
            return _MISSING
    return value


def key_values(object_type: str, entity: Mapping[str, Any]) -> tuple[str | int | float | bool, ...]:
    """The values that identify the entity; raises NaturalKeyError naming the first bad path."""
    values = []
    for path in key_paths(object_type):
        value = _lookup(entity, path)
        # null counts as missing: two objects without a name must not share the key `[null]`.
        if value is _MISSING or not isinstance(value, _SCALARS):
            raise NaturalKeyError(path)
        values.append(value)
    return tuple(values)


def natural_key(object_type: str, entity: Mapping[str, Any]) -> str:
    """The key as stored in `streams_target.objects.natural_key`: a JSON array of the values."""
    return orjson.dumps(key_values(object_type, entity)).decode()
