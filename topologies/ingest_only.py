"""Only the ingest agent: work records pile up on `ingest.work`. Used by `streams bench` to
measure the ingest path alone."""

from __future__ import annotations

import faust

from streams.settings import Settings
from topologies import default


def build(settings: Settings) -> faust.App:
    return default.build(settings, plan_apply_enabled=False)
