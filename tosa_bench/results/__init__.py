"""Results of a sweep: the run directory, how it is read, and the tables made from it.

Modules, one job each:

- :mod:`.store`: the run directory (append-only, fsync'd ``records.jsonl``, env, suite).
- :mod:`.load`: the one entry point that reads a run (:func:`load_run`, :func:`load_frame`).
- :mod:`.layout`: a run's records as one DataFrame (rows per keep, ratios to dense).
- :mod:`.tables`: comparison tables of a run (terminal, Markdown, LaTeX, CSV).
- :mod:`.compare`: two result sets point by point, matched by configuration, noise-aware.
- :mod:`.check`: the regression gate (baselines, environment checks, verdicts).

Dependencies point one way: :mod:`tosa_bench.sweep` writes runs through this package,
and nothing here imports :mod:`tosa_bench.sweep` (a test checks it), so reading and
reporting results never pulls in the measuring machinery.
"""

from tosa_bench.results.load import RunData, load_frame, load_run

__all__ = ["RunData", "load_frame", "load_run"]
