"""``tosa-bench sweep``: measure a grid of model x variant x setting points and store
every result durably, so that a sweep can be resumed, sharded across machines, merged and
reported without measuring again.

Modules, one job each:

- :mod:`.suite`: the TOML suite format (read, validate, defaults, CLI overrides).
- :mod:`.grid`: a suite -> the list of points to measure (dedup, labels, sharding, ``--match gmacs``).
- :mod:`.inputs`: checks of whole-run inputs (weights, datasets, out dir) before measuring.
- :mod:`.accuracy`: per-point accuracy (ImageNet-style top-1/5, NYU-style depth metrics).
- :mod:`.runner`: measures the points one by one, recording each with its status.
- :mod:`.session`: one session end to end (plan, run, tables); the resolved ``suite.toml``;
  which output directories a new run may use (``runs/<run-id>`` by default).
- :mod:`.resume`: what ``--resume`` accepts on its command line and what is left to do.
- :mod:`.lock`: one writer per run directory (an OS lock, freed when its process dies).
- :mod:`.interrupt`: Ctrl-C and SIGTERM stop a sweep between records, never inside one.
- :mod:`.merge`: joins shard outputs into one run.

The run directory itself (``records.jsonl``, ``env.json``, ``suite.toml``), reading it
back and the tables live in :mod:`tosa_bench.results`, which this package writes
through and which never imports it.
"""
