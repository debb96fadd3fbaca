"""The dedup hash: SHA-256 over the RFC 8785 (JCS) canonical JSON of `{object_type, entity}`,
with every `metadata` key removed at any depth.

The `rfc8785` package is the reference, but it costs about 30 µs per entity, which alone would
cap ingest near 30k entities/s per core. orjson with sorted keys produces the same bytes for
the JSON that entities almost always are (objects with ASCII keys, strings, booleans, null,
integers within ±2**53), in under 1 µs. The walk that strips `metadata` also checks for the
cases where the two may differ (any float, a larger integer, a non-ASCII key: JCS orders keys
by UTF-16 code units and formats numbers the ECMAScript way) and sends those to `rfc8785`.
`tests/unit/test_hashing.py` compares both paths byte for byte.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import rfc8785

# RFC 8785 numbers are IEEE doubles; integers beyond this lose digits there. The RFC's advice
# for such values is to carry them as strings, so both paths hash them as their exact digits.
_SAFE_INT = 2**53 - 1
_METADATA = "metadata"


class _NeedsReference(Exception):
    """The value holds something orjson may format differently from RFC 8785."""


def strip_metadata(value: Any) -> Any:
    """`value` without any `metadata` key, at any depth; unsafe integers as their digits."""
    if isinstance(value, dict):
        return {key: strip_metadata(item) for key, item in value.items() if key != _METADATA}
    if isinstance(value, list):
        return [strip_metadata(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -_SAFE_INT <= value <= _SAFE_INT:
        return str(value)
    return value


def _strip_checked(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == _METADATA:
                continue
            if not key.isascii():
                raise _NeedsReference
            out[key] = _strip_checked(item)
        return out
    if isinstance(value, list):
        return [_strip_checked(item) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if -_SAFE_INT <= value <= _SAFE_INT else str(value)
    if isinstance(value, str):
        return value
    raise _NeedsReference  # floats, and anything that is not JSON at all


def canonical_json(object_type: str, entity: Any) -> bytes:
    document = {"entity": entity, "object_type": object_type}
    try:
        return orjson.dumps(_strip_checked(document), option=orjson.OPT_SORT_KEYS)
    except (_NeedsReference, orjson.JSONEncodeError):
        return rfc8785.dumps(strip_metadata(document))


def entity_hash(object_type: str, entity: Any) -> bytes:
    """The 32-byte digest stored in `ingestion_logs.entity_hash`."""
    return hashlib.sha256(canonical_json(object_type, entity)).digest()
