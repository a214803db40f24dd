"""Test-session hooks. Inert in ordinary runs.

Under mutmut (docs/mutation.md) each mutant runs the tests that reach the mutated function
with ``-x``, in no particular order; a mutant is decided at its first failing test, so
running the fastest tests first (by the durations mutmut recorded in its clean run) decides
most mutants in seconds instead of after the slow model-building tests.

Chunk calibrations (tosa_bench.models.chunks) go to a cache directory of this session's
own, so tests neither read the user's calibrations nor add to them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def pytest_configure(config):
    import tempfile

    from tosa_bench.models.chunks import CACHE_ENV

    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="tosa-bench-test-cache-")


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("MUTANT_UNDER_TEST"):
        return
    try:
        durations = json.loads(Path("mutmut-stats.json").read_text())["duration_by_test"]
    except (OSError, ValueError, KeyError):
        return
    items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))
