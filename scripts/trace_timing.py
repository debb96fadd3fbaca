"""How long `streams trace` and `streams status` take on a database holding 1M entity rows.

    STREAMS_DATABASE_URL=postgresql://… .venv/bin/python scripts/trace_timing.py [--rows 1000000]

Builds a fresh database `streams_trace_timing` next to the configured one (migrated, then
filled with SQL: ROWS entity rows over 10 runs and batches of 1000, three history steps, one
change set and one change per row, one ingest batch per 1000 rows), then times every kind of
trace lookup through the same reader the CLI uses, and the whole CLI once per kind (a fresh
Python process: what an operator waits for). About 3 minutes for 1M rows on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import subprocess
import sys
import time
import uuid

import psycopg

from streams.bench import fresh_database
from streams.db.migrate import migrate
from streams.db.status_store import read_state
from streams.db.trace_store import TraceReader
from streams.settings import Settings

FILL = """
INSERT INTO ingestion_logs (id, request_id, run_id, batch, object_type, entity, entity_hash, state, attempts,
                            source_topic, source_partition, source_offset, created_at, updated_at)
SELECT md5('e' || i)::uuid, 'req-' || (i / 1000), 'run-' || (i / %(per_run)s), (i %% %(per_run)s) / 1000,
       'dcim.site', jsonb_build_object('site', jsonb_build_object('name', 's' || i)),
       sha256(('e' || i)::bytea), CASE WHEN i %% 50 = 0 THEN 7 ELSE 3 END, 1 + (i %% 50 = 0)::int * 2,
       'ingest', i %% 12, i / 12, now() - interval '1 hour', now()
  FROM generate_series(0, %(rows)s - 1) AS i;

INSERT INTO ingest_batches (run_id, batch, request_id, entity_count, new_count, duplicate_count,
                            source_topic, source_partition, source_offset)
SELECT 'run-' || (b * 1000 / %(per_run)s), (b * 1000 %% %(per_run)s) / 1000, 'req-' || b, 1000, 1000, 0,
       'ingest', b %% 12, b
  FROM generate_series(0, %(rows)s / 1000 - 1) AS b;

INSERT INTO entity_events (entity_id, at, step, state, attempt, tier, work_id, error)
SELECT md5('e' || i)::uuid, now() - make_interval(secs => 60 - s), s_name, s_state, 1 + s / 2, NULL,
       'run/' || i / 1000 || '/1', CASE WHEN s = 0 THEN '{"class": "transient", "message": "apply: x"}'::jsonb END
  FROM generate_series(0, %(rows)s - 1) AS i,
       (VALUES (0, 'retry', 9), (1, 'outcome', 3), (2, 'duplicate', NULL)) AS v(s, s_name, s_state);

INSERT INTO change_sets (id, ingestion_log_id, attempt)
SELECT 'cs-' || i, md5('e' || i)::uuid, 2 FROM generate_series(0, %(rows)s - 1) AS i;

INSERT INTO changes (change_set_id, seq, change_type, object_type, object_id)
SELECT 'cs-' || i, 0, 'create', 'dcim.site', i FROM generate_series(0, %(rows)s - 1) AS i;

ANALYZE;
"""


def _time(call: object, repeat: int) -> tuple[float, float]:
    spent = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        spent.append(time.perf_counter() - started)
    return statistics.median(spent) * 1000, max(spent) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="Reuse the database if it is already filled.")
    args = parser.parse_args()
    settings = Settings()
    name = "streams_trace_timing"
    base = settings.database_url.get_secret_value().rsplit("/", 1)[0] if settings.database_url else ""
    url = f"{base}/{name}"
    filled = False
    if args.keep:
        try:
            with psycopg.connect(url, connect_timeout=10) as conn:
                row = conn.execute("SELECT count(*) FROM ingestion_logs").fetchone()
                filled = bool(row and row[0] == args.rows)
        except psycopg.Error:
            filled = False
    if not filled:
        url = fresh_database(settings, name)
        migrate(url)
        started = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET maintenance_work_mem = '256MB'")
            for statement in FILL.split(";\n"):
                if statement.strip():
                    conn.execute(statement, {"rows": args.rows, "per_run": max(1000, args.rows // 10)})
        print(f"filled {args.rows} rows (3 history steps, 1 change set each) in {time.perf_counter() - started:.0f}s")

    rng = random.Random(7)
    ids = [uuid.UUID(hex=hashlib.md5(f"e{rng.randrange(args.rows)}".encode(), usedforsecurity=False).hexdigest()) for _ in range(50)]
    with TraceReader(url) as reader:
        assert reader.entity(ids[0]) is not None, "the filled rows are not where the script expects them"
        digest = hashlib.sha256(b"e12345").hexdigest()
        lookups = {
            "trace ENTITY_ID": lambda: [reader.entity(entity_id) for entity_id in ids[:1]],
            "trace --entity-hash H": lambda: [reader.entity(i) for i in reader.ids_by_hash(digest, 3)],
            "trace --request ID": lambda: [reader.batches(r, b, 20) for r, b in reader.batches_of_request("req-77")],
            "trace --run R --batch N": lambda: reader.batches("run-3", 42, 20),
            "trace --run R (100k rows)": lambda: reader.batches("run-3", None, 20),
        }
        print(f"{'lookup (reader, warm)':32} {'median ms':>10} {'max ms':>10}")
        for label, call in lookups.items():
            median, worst = _time(call, 20)
            print(f"{label:32} {median:10.1f} {worst:10.1f}")
    median, worst = _time(lambda: read_state(url, stuck_after=600.0), 3)
    print(f"{'status (Postgres part)':32} {median:10.1f} {worst:10.1f}")

    env = {**os.environ, "STREAMS_DATABASE_URL": url}
    print(f"{'whole CLI (fresh process)':32} {'seconds':>10}")
    for label, argv in (("streams trace ENTITY_ID", ["trace", str(ids[1])]),
                        ("streams trace --run R --batch N", ["trace", "--run", "run-5", "--batch", "7"]),
                        ("streams trace --request ID", ["trace", "--request", "req-900"])):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "streams", *argv], env=env, capture_output=True, timeout=120,  # noqa: S603
                              check=False)
        spent = time.perf_counter() - started
        assert done.returncode == 0, done.stderr.decode()[-500:]
        print(f"{label:32} {spent:10.2f}")


if __name__ == "__main__":
    main()
