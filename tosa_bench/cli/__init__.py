"""``tosa-bench`` command line (entry point ``tosa_bench.cli:app``)."""

from tosa_bench.cli.common import app
from tosa_bench.cli import data, evaluate, models, profile  # noqa: F401  (each registers its commands)
from tosa_bench.cli import sweep  # noqa: F401  (sweep, report, merge)
from tosa_bench.cli import check  # noqa: F401  (compare, check)

__all__ = ["app"]
