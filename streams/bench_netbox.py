"""`streams bench --target netbox`: the topology against a real NetBox with the diode plugin.

NetBox is the slow part (18 to 65 ms per created entity, NETBOX.md), so the question is whether
`streams` keeps it busy. Two measurements of the same work in one run:

(n2) entities through `streams` (ingest topic, one worker, Postgres, plan-apply) into NetBox,
     timed from the first row to the last settled; the worker's log says how many requests it
     made, so the mean request size is known;
(n1) NetBox's bulk-plan-apply called directly with the same number of entities of the same
     shape, in requests of that mean size, STREAMS_HTTP_CONCURRENCY in flight, one OAuth2 token.

NetBox keeps what is applied and is idempotent by natural key, so each measurement applies
objects of its own (generator namespaces); a warm-up first creates what both share (device
types, manufacturers, roles), so neither pays for it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import orjson

from streams.bench import Result, Step, _scalar, _wait, prepare
from streams.client.generate import generate_entities
from streams.client.producer import IngestProducer
from streams.dev.workers import start_worker, stop_worker
from streams.pipeline.outcomes import classify_response
from streams.settings import Settings

WARM_UP = 200


def _token(settings: Settings) -> str:
    assert settings.target_token_url and settings.target_client_secret is not None
    response = httpx.post(settings.target_token_url, timeout=30, data={
        "grant_type": "client_credentials", "scope": settings.target_scope},
        auth=(settings.target_client_id or "", settings.target_client_secret.get_secret_value()))
    response.raise_for_status()
    return str(response.json()["access_token"])


def netbox_direct(settings: Settings, count: int, step: Step, *, namespace: str, first_host: int, size: int,
                  label: str = "(n1) NetBox bulk-plan-apply called directly") -> Result:
    """NetBox's own capacity for `count` fresh entities at the topology's concurrency."""
    step(f"{label}: {count} entities, requests of {size}, {settings.http_concurrency} in flight")
    items = [{"id": str(uuid.uuid4()), **item} for item in
             generate_entities(count, seed=404, duplicate_ratio=0.0, namespace=namespace, first_host=first_host)]
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    token = _token(settings)
    outcomes: Counter[str] = Counter()

    async def run() -> float:
        queue: asyncio.Queue[list[dict[str, object]]] = asyncio.Queue()
        for chunk in chunks:
            queue.put_nowait(chunk)
        async with httpx.AsyncClient(base_url=settings.target_url or "", timeout=settings.target_timeout,
                                     headers={"authorization": f"Bearer {token}"},
                                     limits=httpx.Limits(max_connections=settings.http_concurrency)) as client:
            async def caller() -> None:
                while not queue.empty():
                    chunk = queue.get_nowait()
                    response = await client.post("/bulk-plan-apply/", content=orjson.dumps({"entities": chunk}),
                                                 headers={"content-type": "application/json"})
                    ids = [str(item["id"]) for item in chunk]
                    result = classify_response(ids, response.status_code, response.headers, response.content, 0)
                    outcomes.update(o.state.name if o.state else "failed" for o in result.outcomes)
            started = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(settings.http_concurrency)))
            return time.perf_counter() - started

    seconds = asyncio.run(run())
    return Result(label, count / seconds, "entities/s", count, seconds,
                  f"{len(chunks)} requests of {size}, {settings.http_concurrency} in flight; "
                  + ", ".join(f"{n} {state.lower()}" for state, n in sorted(outcomes.items())))


def netbox_end_to_end(settings: Settings, count: int, logs: Path, step: Step, *, namespace: str,
                      first_host: int) -> tuple[Result, int]:
    """The measurement, and the mean number of entities per request the worker sent."""
    prepared = prepare(settings, "netbox")
    items = list(generate_entities(count, seed=404, duplicate_ratio=0.0, namespace=namespace, first_host=first_host))
    with IngestProducer(prepared) as producer:
        producer.send_run("bench-netbox", items, batch_size=500)
    step(f"(n2) {count} entities on the ingest topic; a worker applies them to NetBox")
    worker = start_worker(prepared, log_path=logs / "bench-netbox-worker.log")
    try:
        alive = lambda: worker.poll() is None  # noqa: E731
        done = _wait(lambda: _scalar(prepared, "SELECT count(*) FROM ingestion_logs WHERE state IN (3, 5, 7)")
                     == count, 1800, "every entity settled in NetBox", alive)
    finally:
        stop_worker(worker)
    started = float(_scalar(prepared, "SELECT extract(epoch FROM min(created_at)) FROM ingestion_logs"))
    seconds = done - started
    states = {name: _scalar(prepared, f"SELECT count(*) FROM ingestion_logs WHERE state = {number}")  # noqa: S608
              for name, number in (("applied", 3), ("no changes", 5), ("errored", 7))}
    retried = _scalar(prepared, "SELECT count(*) FROM ingestion_logs WHERE attempts > 1")
    size = _mean_request_size(logs / "bench-netbox-worker.log")
    return Result("(n2) end to end through streams into NetBox", count / seconds, "entities/s", count, seconds,
                  f"requests of {size} on average, {prepared.http_concurrency} in flight; "
                  + ", ".join(f"{n} {k}" for k, n in states.items()) + f"; {retried} retried"), size


def _mean_request_size(log: Path) -> int:
    entities = requests = 0
    for line in log.read_text(errors="replace").splitlines():
        if '"work record applied"' in line:
            record = orjson.loads(line)
            entities += int(record.get("claimed", 0))
            requests += int(record.get("requests", 0))
    return max(1, round(entities / max(requests, 1)))


def run(settings: Settings, count: int, logs: Path, step: Step) -> list[Result]:
    tag = uuid.uuid4().hex[:6]
    base = int(uuid.uuid4().int % 8_000_000)
    netbox_direct(settings, WARM_UP, step, namespace=f"w{tag}", first_host=base, size=100, label="warm-up")
    through, size = netbox_end_to_end(settings, count, logs, step, namespace=f"s{tag}", first_host=base + WARM_UP)
    direct = netbox_direct(settings, count, step, namespace=f"d{tag}", first_host=base + WARM_UP + count, size=size)
    return [direct, through]
