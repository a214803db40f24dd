"""``tosa-bench`` command line (entry point ``tosa_bench.cli:app``)."""

from tosa_bench.cli.common import app
from tosa_bench.cli import data, evaluate, models, profile  # noqa: F401  (each registers its commands)
from tosa_bench.cli import sweep  # noqa: F401  (sweep, report, merge)
from tosa_bench.cli import check  # noqa: F401  (compare, check)
from tosa_bench.cli import plot  # noqa: F401  (plot, show-tokens)
from tosa_bench.cli import train  # noqa: F401  (train selector|finetune|depth|classifier)
from tosa_bench.cli import demo  # noqa: F401  (demo)
from tosa_bench.cli import launch  # noqa: F401  (status; sweep --launcher)
from tosa_bench.cli import calibrate  # noqa: F401  (calibrate)

__all__ = ["app"]
