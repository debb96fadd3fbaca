"""The diode entity shape: what an entity looks like on `ingest`, in Postgres and on the wire.

The NetBox diode plugin reads each bulk entry's data under one key, the diode entity key of
its object type (`{"object_type": "dcim.site", "entity": {"site": {"name": "dc1"}}}`), in
snake_case or lowerCamel (`ip_address` or `ipAddress`). That is the contract here too:

- an entity with exactly one key whose value is an object is in the diode shape; a lowerCamel
  key of a known type is rewritten in snake_case, so both spellings are one entity;
- any other entity is *flat* (`{"name": "dc1", "slug": "dc1"}`): it is wrapped under the key
  of its object type (streams.pipeline.netbox_types), or refused when the type is unknown.

The result is the normal form: stored in `ingestion_logs.entity`, hashed for dedup, and sent
to the target as it is, so a flat entity and its wrapped twin are one row. Field names inside
the data are left as sent: they may hold user-defined keys (custom fields, config contexts)
where `fooBar` and `foo_bar` are different things.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams.pipeline.netbox_types import ENTITY_KEYS, lower_camel


class EntityShapeError(ValueError):
    """A flat entity of an object type whose diode key is not known."""


def is_wrapped(entity: Mapping[str, Any]) -> bool:
    """In the diode shape: one key, and its value is an object."""
    if len(entity) != 1:
        return False
    (value,) = entity.values()
    return isinstance(value, dict)


def to_diode_shape(object_type: str, entity: dict[str, Any]) -> dict[str, Any]:
    """`entity` in the normal form; raises EntityShapeError for a flat entity of an unknown type."""
    key = ENTITY_KEYS.get(object_type)
    if is_wrapped(entity):
        (given, data), = entity.items()
        if key is not None and given != key and given == lower_camel(key):
            return {key: data}
        return entity
    if key is None:
        raise EntityShapeError(
            f"object type {object_type!r} is not one this version knows, so a flat entity cannot be "
            f"wrapped: send it in the diode shape, {{\"<entity key>\": {{…}}}}")
    return {key: entity}


def entity_data(object_type: str, entity: Mapping[str, Any]) -> dict[str, Any] | None:
    """The data under the object type's key (either spelling), as the plugin reads it; None when
    the entity holds no data there."""
    key = ENTITY_KEYS.get(object_type)
    keys = (key, lower_camel(key)) if key is not None else tuple(entity)[:1]
    for name in keys:
        data = entity.get(name)
        if isinstance(data, dict) and data:
            return data
    return None
