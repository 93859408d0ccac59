"""Shared test helpers: fixture loading and wire-order builders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "bybit"
if not FIXTURES.is_dir():  # CI clones main with shared/ beside it; a local checkout may differ
    FIXTURES = Path("/work/shared/fixtures/bybit")


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture(name: str) -> Any:
    return json.loads(fixture_bytes(name))
