"""The fast canonical JSON path gives exactly the bytes of the RFC 8785 reference."""

from __future__ import annotations

import random
import string

import pytest
import rfc8785

from streams.pipeline.hashing import canonical_json, entity_hash, strip_metadata

TRICKY_STRINGS = [
    "", "plain", "quote\"back\\slash", "slash/", "tab\tnl\ncr\rff\fbs\b", "\x00\x01\x1f\x7f",
    "é ü ß", "日本語", "emoji 🚀", "\u2028\u2029", "<script>&amp;", "\ud7ff\ue000\uffff",
]


def _reference(object_type: str, entity: object) -> bytes:
    return rfc8785.dumps(strip_metadata({"object_type": object_type, "entity": entity}))


def _random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice(TRICKY_STRINGS)
    if kind == 1:
        return rng.choice([0, 1, -1, 2**53, -(2**53), 2**53 + 1, 10**20, rng.randrange(-10**6, 10**6)])
    if kind == 2:
        return rng.choice([0.5, 1.0, -0.0, 1e21, 1e-7, 123.456, 3.0e300, 5e-324])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind in (4, 5):
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(12)))
    if kind in (6, 7):
        keys = [rng.choice(["name", "slug", "metadata", "a", "B", "é", "z" * 3, "\ue000", "🚀", "_x"])
                for _ in range(rng.randrange(5))]
        return {key: _random_value(rng, depth + 1) for key in keys}
    return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]


@pytest.mark.parametrize("seed", range(40))
def test_fast_path_matches_reference_on_random_documents(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(100):
        entity = _random_value(rng)
        assert canonical_json("dcim.site", entity) == _reference("dcim.site", entity)


def test_metadata_is_ignored_at_any_depth() -> None:
    a = {"name": "dc1", "metadata": {"seen": 1}, "tags": [{"name": "x", "metadata": 1}]}
    b = {"tags": [{"name": "x"}], "name": "dc1", "metadata": {"seen": 2}}
    assert entity_hash("dcim.site", a) == entity_hash("dcim.site", b)


def test_object_type_and_content_change_the_hash() -> None:
    base = entity_hash("dcim.site", {"name": "dc1"})
    assert entity_hash("dcim.device", {"name": "dc1"}) != base
    assert entity_hash("dcim.site", {"name": "dc2"}) != base
    assert len(base) == 32


def test_key_order_does_not_matter() -> None:
    assert entity_hash("x.y", {"a": 1, "b": {"c": 2, "d": 3}}) == entity_hash("x.y", {"b": {"d": 3, "c": 2}, "a": 1})
