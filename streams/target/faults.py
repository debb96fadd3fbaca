"""Fault injection for the reference target: what to break, and the pure decisions it implies.

`Faults` is a frozen value: the CLI builds it from options, `PUT /_admin/faults` replaces it
whole. Every random-looking decision is a hash of (seed, a label, ids), never `random`, so a
test that sends the same requests gets the same failures on every run and machine:

- permanent (a validation plan error): drawn per (seed, entity id). An id that is invalid
  stays invalid on every retry and replay, as a real validation error would, until the faults
  are changed.
- transient (the plugin's database-contention apply error): drawn per (seed, entity id,
  receipt number). A retried entity gets a fresh draw, so transient failures clear with
  retries, as a real deadlock would; an id failing forever would be a permanent failure in
  disguise.
- fail_first: the first N receipts of every id fail with the contention error, then it succeeds.
- status_rate: drawn per (seed, request number), counted by the server from 1; status_first:
  the first N requests, whatever the draw.
- poison_pattern: the first entity whose JSON matches breaks the request (see poison_status).
- db_down: every entity gets the plan error `internal error`, as with NetBox's database down.

Pure: no I/O, no clock, no state.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class Faults(BaseModel):
    """What the reference target breaks on purpose. The default breaks nothing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: Annotated[float, Field(ge=0.0, le=600_000.0)] = 0.0
    transient_rate: Rate = 0.0
    permanent_rate: Rate = 0.0
    fail_first: Annotated[int, Field(ge=0)] = 0
    poison_pattern: str | None = None
    # The plugin answers 500 when an entry breaks it, with the entries before it committed; a
    # 4xx here instead refuses the whole request and applies nothing.
    poison_status: Annotated[int, Field(ge=400, le=599)] = 500
    status_rate: Rate = 0.0
    status_first: Annotated[int, Field(ge=0)] = 0  # the first N requests get status_code
    status_code: Annotated[int, Field(ge=400, le=599)] = 503
    retry_after: Annotated[int, Field(ge=0)] | None = None
    outage: bool = False
    # NetBox with its database down: 207, every entity with the plan error `internal error`.
    db_down: bool = False
    capacity: Annotated[int, Field(ge=1)] | None = None
    seed: int = 0

    @field_validator("poison_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value


class EntityFault(enum.Enum):
    PLAN = "plan"  # permanent: the target finds the entity invalid
    APPLY = "apply"  # transient: a conflict at apply time


@dataclass(frozen=True)
class InjectedError:
    step: EntityFault
    message: str


def draw(seed: int, label: str, *parts: object) -> float:
    """A uniform number in [0, 1) fixed by its inputs (the same on every run and machine)."""
    text = ":".join([str(seed), label, *map(str, parts)])
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def entity_fault(faults: Faults, entity_id: str, receipt: int) -> InjectedError | None:
    """The injected failure of one entity on its `receipt`-th arrival (counted from 1), if any."""
    if faults.permanent_rate and draw(faults.seed, "permanent", entity_id) < faults.permanent_rate:
        return InjectedError(EntityFault.PLAN, "injected permanent failure")
    if receipt <= faults.fail_first:
        message = f"injected failure of receipt {receipt} of {faults.fail_first}"
        return InjectedError(EntityFault.APPLY, message)
    if faults.transient_rate and draw(faults.seed, "transient", entity_id, receipt) < faults.transient_rate:
        return InjectedError(EntityFault.APPLY, "injected transient failure")
    return None


def request_status(faults: Faults, request_number: int) -> int | None:
    """The status to answer the `request_number`-th request with instead of serving it, if any."""
    if faults.outage:
        return 503
    if request_number <= faults.status_first:
        return faults.status_code
    if faults.status_rate and draw(faults.seed, "status", request_number) < faults.status_rate:
        return faults.status_code
    return None


def retry_after(faults: Faults, status: int) -> str | None:
    """The Retry-After header value for an injected status, when one is configured."""
    if faults.retry_after is None or status not in (429, 503):
        return None
    return str(faults.retry_after)


@lru_cache(maxsize=16)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def is_poison(faults: Faults, entity_json: str) -> bool:
    """Whether an entity's JSON text makes the target reject the whole request (422)."""
    if faults.poison_pattern is None:
        return False
    return _compiled(faults.poison_pattern).search(entity_json) is not None
