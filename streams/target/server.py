"""The reference target: the `bulk-plan-apply` contract over Postgres, with fault injection.

    POST /bulk-plan-apply/   plan and apply a batch (schemas/target-api.yaml)
    GET  /health             200 {"status": "ok"}
    GET  /_admin/stats       counters since start or the last reset, for tests and benchmarks
    GET  /_admin/receipts/ID when the first receipts of an id arrived (epoch seconds)
    GET|PUT /_admin/faults   read or replace the injected faults live (`Faults` as JSON)
    POST /_admin/reset       zero the counters (the data stays)

It reads and answers what the NetBox diode plugin reads and answers (see NETBOX.md), so data
that applies here applies to NetBox: each entity in the diode shape (`{"site": {…}}`, either
spelling of the key), errors in the plugin's shapes (`{"plan": {"dcim.site": {"slug": […]}}}`,
`{"apply": {"__all__": ["db_deadlock_after_retries"]}}`), 403 for any credential problem, 500
with part of the request committed for an entity that breaks the server (the poison fault).

A bulk request goes through, in order: capacity (503 + Retry-After 1 beyond it), latency,
outage and injected statuses, the bearer token (403), the envelope (400, also for an id that
is not a UUID or appears twice). Then, per entity: an id that already has a stored result gets
that result again and is not applied again (idempotency by id, which NetBox does not give);
an unknown object type or data missing under the entity key, injected plan errors and
natural-key errors are plan errors; the rest is planned against the existing objects (create,
update with `before`, or noop) in request order, so two entities with the same natural key in
one request apply in order: the later sees the earlier's data. A poison entity cuts the
request there: the entities before it are applied, and the answer is 500.

Bulk speed over per-entity transactions: a real target applies each entity in a transaction
of its own. This one writes all creates and updates of a request with ONE upsert and all new
results with ONE insert, in one transaction, so it is never the bottleneck of a benchmark.
The same insert appends every id it stores to `streams_target.applies`, a receipt log without a
key (id, change type, time), which `streams chaos` reads to count ids applied twice.
Entities failed by fault injection are left out of the write, so every entity still succeeds
or fails on its own as far as a client can see. Concurrency between requests is optimistic
(see store.py): a request that lost a race is planned again from fresh reads, up to
`MAX_WRITE_ATTEMPTS` times, then its entities get the plugin's contention error (transient).
When its own database is unreachable it answers as the plugin does with NetBox's database
down: 207, every entity with the plan error `internal error`.

`/_admin/stats` counts bulk requests only, by status; `applied` is the number of stored
results in the database. When a token is set, the admin routes require it too.
Logs carry counts and ids only: never entity bodies, never the token.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from streams.models import BulkEntity, BulkRequest
from streams.pipeline.entity_shape import entity_data
from streams.pipeline.netbox_types import ENTITY_KEYS, lower_camel
from streams.target import faults as injected
from streams.target.faults import EntityFault, Faults
from streams.target.natural_keys import NaturalKeyError, natural_key
from streams.target.store import (
    Key,
    ObjectWrite,
    Session,
    StoredObject,
    StoreRejected,
    StoreUnavailable,
    TargetStore,
    WriteConflict,
)

log = logging.getLogger(__name__)

MAX_WRITE_ATTEMPTS = 5
_JSON = "application/json"
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=_JSON, headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None, **detail: Any) -> Response:
    body: dict[str, Any] = {"message": message}
    if detail:
        body["detail"] = detail
    return _json(body, status, headers)


def _validation_message(exc: ValidationError, limit: int = 3) -> str:
    # Names where and what, never the offending input: it may be an entity body.
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:limit]:
        where = ".".join(str(part) for part in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    more = f" (and {exc.error_count() - limit} more)" if exc.error_count() > limit else ""
    return "; ".join(parts) + more


# --- stats -----------------------------------------------------------------------------------


_TIMED_RECEIPTS = 5


@dataclass
class Stats:
    """Counters since start or reset.

    Receipts and applies are kept per id (about 200 bytes an id), so a test can assert that
    the target saw each id applied once however often it was delivered; `POST /_admin/reset`
    frees them between benchmark runs.
    """

    requests: Counter[int] = field(default_factory=Counter)
    received: int = 0
    receipts: dict[str, int] = field(default_factory=dict)
    # When the first receipts of each id arrived: tests measure retry timing from the outside.
    receipt_times: dict[str, list[float]] = field(default_factory=dict)
    receipts_max: int = 0
    applied_ids: set[str] = field(default_factory=set)
    duplicate_applies: int = 0

    def receive(self, ids: list[str]) -> list[int]:
        """Count one receipt of each id; return each id's receipt number (from 1)."""
        numbers = []
        for entity_id in ids:
            number = self.receipts.get(entity_id, 0) + 1
            self.receipts[entity_id] = number
            numbers.append(number)
            if number <= _TIMED_RECEIPTS:
                self.receipt_times.setdefault(entity_id, []).append(time.time())
        self.received += len(ids)
        self.receipts_max = max(self.receipts_max, *numbers)
        return numbers

    def applied(self, ids: list[str]) -> None:
        for entity_id in ids:
            if entity_id in self.applied_ids:
                # Unreachable while the results table's primary key holds; this is the check.
                self.duplicate_applies += 1
                log.error("id applied twice", extra={"entity_id": entity_id})
            self.applied_ids.add(entity_id)


# --- planning --------------------------------------------------------------------------------


@dataclass(slots=True)
class Item:
    index: int
    id: str  # as sent, echoed in the result
    canonical: str  # as Postgres prints the uuid: the key of stored results and receipts
    object_type: str
    entity: dict[str, Any]  # as sent: {entity key: data}
    receipt: int
    data: dict[str, Any] | None = None  # under the entity key; None: nothing there (a plan error)


@dataclass(slots=True)
class Slot:
    """One object as this request sees it while planning in order."""

    key: Key
    object_id: int | None
    read_version: int  # 0: the object did not exist when read
    data: dict[str, Any] | None
    data_json: bytes = b""  # the JSON of `data` once an entity of this request wrote it
    written: bool = False


@dataclass(slots=True)
class Planned:
    item: Item
    slot: Slot
    change_type: str
    before: dict[str, Any] | None
    data_json: bytes


def _change_set(item: Item, change_type: str, object_id: int | None, before: dict[str, Any] | None,
                data: Any) -> dict[str, Any]:
    change = {"change_type": change_type, "object_type": item.object_type, "object_id": object_id,
              "before": before, "data": data}
    return {"id": str(uuid.uuid4()), "changes": [change]}


Errors = dict[str, Any]  # the plugin's error object: {scope: {field: [messages]}} or {"__all__": […]}
INTERNAL_ERROR: Errors = {"request": {"__all__": ["internal error"]}}
CONTENTION: Errors = {"__all__": ["db_deadlock_after_retries"]}  # the plugin's _db_error_code


def _result(item: Item, change_set: Any, plan: Errors | None = None, apply: Errors | None = None) -> dict[str, Any]:
    errors = None
    if plan is not None or apply is not None:
        errors = {"plan": plan, "apply": apply}
    return {"id": item.id, "change_set": change_set, "errors": errors}


def _shape_error(object_type: str, entity: dict[str, Any]) -> Errors | None:
    """The plugin's plan error for an entity it cannot read (views.py::_extract_entity_data)."""
    key = ENTITY_KEYS.get(object_type)
    if key is None:
        return {"request": {"object_type": [f"{object_type} is not supported in this version."]}}
    if entity_data(object_type, entity) is None:
        return {"entity": {lower_camel(key): [f"No data found in expected entity key, got: {list(entity)}"]}}
    return None


def _triage(items: list[Item], stored: dict[str, str], faults: Faults,
            results: list[dict[str, Any]]) -> list[tuple[Item, Key, bool]]:
    """Answer stored ids and plan errors into `results`; return the rest with key and apply fault."""
    pending = []
    for item in items:
        if item.canonical in stored:
            # Already applied: the same answer again, as JSON text straight from the store.
            results[item.index] = _result(item, orjson.Fragment(stored[item.canonical]))
            continue
        if item.data is None:
            results[item.index] = _result(item, None, plan=_shape_error(item.object_type, item.entity))
            continue
        fault = injected.entity_fault(faults, item.canonical, item.receipt)
        if fault is not None and fault.step is EntityFault.PLAN:
            results[item.index] = _result(item, None, plan={item.object_type: {"__all__": [fault.message]}})
            continue
        try:
            key = (item.object_type, natural_key(item.object_type, item.data))
        except NaturalKeyError as exc:
            results[item.index] = _result(item, None, plan={item.object_type: {exc.path: [str(exc)]}})
            continue
        pending.append((item, key, fault is not None))
    return pending


def _plan(pending: list[tuple[Item, Key, bool]], existing: dict[Key, StoredObject],
          results: list[dict[str, Any]]) -> tuple[list[Planned], list[Slot]]:
    """Plan in request order; answer apply faults into `results`; return the plan and the writes."""
    slots: dict[Key, Slot] = {}
    planned = []
    for item, key, apply_fault in pending:
        assert item.data is not None
        slot = slots.get(key)
        if slot is None:
            found = existing.get(key)
            if found is None:
                slot = slots[key] = Slot(key, None, 0, None)
            else:
                slot = slots[key] = Slot(key, found.object_id, found.version, found.data)
        before = slot.data
        change_type = "create" if before is None else "noop" if before == item.data else "update"
        if apply_fault:
            # Planned but not applied, as the plugin reports a rolled-back entity: the change
            # set comes back with the error. Later siblings do not see its data.
            change_set = _change_set(item, change_type, slot.object_id, before, item.data)
            results[item.index] = _result(item, change_set, apply=CONTENTION)
            continue
        data_json = orjson.dumps(item.data)  # once: for the object row and for the change set
        if change_type != "noop":
            slot.data, slot.data_json, slot.written = item.data, data_json, True
        planned.append(Planned(item, slot, change_type, before, data_json))
    return planned, [slot for slot in slots.values() if slot.written]


Answer = tuple[list[dict[str, Any]], list[str]]  # (results in request order, ids applied now)


async def _attempt(session: Session, items: list[Item], faults: Faults) -> Answer:
    """Plan and write one request; raises WriteConflict if a concurrent request got in between."""
    results: list[dict[str, Any]] = [{}] * len(items)
    stored = await session.stored_results([item.canonical for item in items])
    pending = _triage(items, stored, faults, results)
    existing = await session.fetch_objects(list({key: None for _, key, _ in pending}))
    planned, written = _plan(pending, existing, results)
    if not planned:
        return results, []
    writes = [ObjectWrite(s.key[0], s.key[1], s.data_json.decode(), s.read_version + 1) for s in written]
    async with session.transaction() as tx:
        object_ids = await tx.upsert_objects(writes)
        for slot in written:
            slot.object_id = object_ids[slot.key]
        rows = []
        for p in planned:
            data = orjson.Fragment(p.data_json)
            text = orjson.dumps(_change_set(p.item, p.change_type, p.slot.object_id, p.before, data))
            results[p.item.index] = _result(p.item, orjson.Fragment(text))
            rows.append((p.item.canonical, text.decode(), p.change_type))
        await tx.insert_results(rows)
    return results, [row[0] for row in rows]


# --- HTTP ------------------------------------------------------------------------------------


class Target:
    """The server's state: faults, counters, the store. One per app, used from one event loop."""

    def __init__(self, store: TargetStore, faults: Faults, token: str | None) -> None:
        self.store = store
        self.faults = faults
        self.stats = Stats()
        self._token = f"Bearer {token}".encode() if token else None
        self._in_flight = 0
        self._requests_seen = 0
        self._retrying = asyncio.Lock()

    def authorized(self, request: Request) -> bool:
        if self._token is None:
            return True
        given = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(given, self._token)

    async def bulk(self, request: Request) -> Response:
        faults = self.faults
        if faults.capacity is not None and self._in_flight >= faults.capacity:
            response = _error(503, "over capacity", {"Retry-After": "1"})
        else:
            self._in_flight += 1
            try:
                response = await self._serve(request, faults)
            finally:
                self._in_flight -= 1
        self.stats.requests[response.status_code] += 1
        return response

    async def _serve(self, request: Request, faults: Faults) -> Response:
        body = await request.body()  # read first, so every answer leaves the connection reusable
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        self._requests_seen += 1
        status = injected.request_status(faults, self._requests_seen)
        if status is not None:
            after = injected.retry_after(faults, status)
            return _error(status, "injected failure", {"Retry-After": after} if after else None)
        if not self.authorized(request):
            # The plugin answers 403 to every credential problem, never 401.
            return _error(403, "missing, unknown or expired bearer token")
        try:
            batch = BulkRequest.model_validate_json(body)
        except ValidationError as exc:
            return _error(400, _validation_message(exc))
        canonical, problem = _canonical_ids(batch.entities)
        if problem:
            return _error(400, problem)
        receipts = self.stats.receive(canonical)
        items = [Item(i, e.id, c, e.object_type, e.entity, r, _readable(e))
                 for i, (e, c, r) in enumerate(zip(batch.entities, canonical, receipts, strict=True))]
        if faults.db_down:
            return _json({"results": [_result(item, None, plan=INTERNAL_ERROR) for item in items]}, 207)
        poison = _first_poison(faults, batch.entities)
        if poison is not None and faults.poison_status != 500:
            return _error(faults.poison_status, f"entity {batch.entities[poison].id} matches the poison pattern",
                          id=batch.entities[poison].id, reason="poison")
        try:
            # The plugin applies entry after entry and dies at the poison with the earlier
            # ones committed: the same here.
            results = await self._apply(items[:poison], faults) if poison != 0 else []
        except StoreUnavailable as exc:
            log.warning("target database unavailable", extra={"error": str(exc), "entities": len(items)})
            results = [_result(item, None, plan=INTERNAL_ERROR) for item in items]
            return _json({"results": results}, 207)
        except StoreRejected as exc:
            # A value the database refuses breaks the request, as an unexpected exception
            # breaks the plugin's: 500, and the client isolates the entity.
            log.warning("target database refused a value", extra={"error": str(exc), "entities": len(items)})
            return _json({"errors": INTERNAL_ERROR}, 500)
        if poison is not None:
            return _json({"errors": INTERNAL_ERROR}, 500)
        failed = any(result["errors"] is not None for result in results)
        return _json({"results": results}, 207 if failed else 200)

    async def _apply(self, items: list[Item], faults: Faults) -> list[dict[str, Any]]:
        for attempt in range(1, MAX_WRITE_ATTEMPTS + 1):
            try:
                if attempt == 1:
                    results, applied = await self._attempt_once(items, faults)
                else:
                    # Requests that lost a race retry one at a time, so a burst of requests for
                    # the same objects converges instead of losing to each other again.
                    async with self._retrying:
                        results, applied = await self._attempt_once(items, faults)
            except WriteConflict as exc:
                log.debug("write conflict, planning again", extra={"attempt": attempt, "error": str(exc)})
                continue
            self.stats.applied(applied)
            return results
        log.warning("write conflicts, answering the plugin's contention error", extra={"entities": len(items)})
        return [_result(item, None, apply=CONTENTION) for item in items]

    async def _attempt_once(self, items: list[Item], faults: Faults) -> Answer:
        async with self.store.session() as session:
            return await _attempt(session, items, faults)

    async def admin_stats(self, request: Request) -> Response:
        try:
            applied = await self.store.count_results()
        except StoreUnavailable as exc:
            return _error(503, f"target database unavailable: {exc}")
        stats = self.stats
        return _json({
            "requests": {str(code): count for code, count in sorted(stats.requests.items())},
            "received": stats.received,
            "applied": applied,
            "receipts_by_id_max": stats.receipts_max,
            "duplicate_applies": stats.duplicate_applies,
            "in_flight": self._in_flight,
        })

    async def admin_receipts(self, request: Request) -> Response:
        entity_id = str(request.path_params["entity_id"]).lower()
        return _json({"id": entity_id, "times": self.stats.receipt_times.get(entity_id, [])})

    async def admin_faults(self, request: Request) -> Response:
        if request.method == "PUT":
            try:
                self.faults = Faults.model_validate_json(await request.body())
            except ValidationError as exc:
                return _error(400, _validation_message(exc))
            log.info("faults replaced", extra={"faults": self.faults.model_dump(exclude_defaults=True)})
        return _json(self.faults.model_dump())

    async def admin_reset(self, request: Request) -> Response:
        self.stats = Stats()
        self._requests_seen = 0
        return _json({"status": "reset"})


def _readable(entity: BulkEntity) -> dict[str, Any] | None:
    """The data the plugin would read: only for a type it knows, under that type's key."""
    return entity_data(entity.object_type, entity.entity) if entity.object_type in ENTITY_KEYS else None


def _first_poison(faults: Faults, entities: tuple[BulkEntity, ...]) -> int | None:
    if faults.poison_pattern is None:
        return None
    for index, entity in enumerate(entities):
        if injected.is_poison(faults, orjson.dumps(entity.entity).decode()):
            return index
    return None


def _canonical_ids(entities: tuple[BulkEntity, ...]) -> tuple[list[str], str | None]:
    """Each id as Postgres prints it; or a message naming the first id that is bad or repeated."""
    canonical: list[str] = []
    seen: set[str] = set()
    for index, entity in enumerate(entities):
        text = entity.id
        if not _CANONICAL_UUID.fullmatch(text):  # the usual case skips the slower parse
            try:
                text = str(uuid.UUID(text))
            except ValueError:
                return [], f"entities.{index}.id: not a UUID"
        if text in seen:
            return [], f"entities.{index}.id: {entity.id} appears more than once in the request"
        seen.add(text)
        canonical.append(text)
    return canonical, None


def create_app(database_url: str, faults: Faults, *, pool_size: int = 8, token: str | None = None,
               statement_timeout: float = 10.0) -> Starlette:
    """The reference target as an ASGI app; the pool opens (and the schema applies) in the lifespan."""
    target = Target(TargetStore(database_url, pool_size=pool_size, statement_timeout=statement_timeout),
                    faults, token)

    def admin(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            if not target.authorized(request):
                return _error(403, "missing, unknown or expired bearer token")
            return await handler(request)
        return guarded

    async def health(request: Request) -> Response:
        return _json({"status": "ok"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await target.store.open()
        try:
            yield
        finally:
            await target.store.close()

    app = Starlette(routes=[
        Route("/bulk-plan-apply/", target.bulk, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/_admin/stats", admin(target.admin_stats), methods=["GET"]),
        Route("/_admin/faults", admin(target.admin_faults), methods=["GET", "PUT"]),
        Route("/_admin/receipts/{entity_id}", admin(target.admin_receipts), methods=["GET"]),
        Route("/_admin/reset", admin(target.admin_reset), methods=["POST"]),
    ], lifespan=lifespan)
    app.state.target = target
    return app
