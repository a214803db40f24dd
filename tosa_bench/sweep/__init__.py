"""``tosa-bench sweep``: measure a grid of model x variant x setting points and store
every result durably, so that a sweep can be resumed, sharded across machines, merged and
reported without measuring again.

Modules, one job each:

- :mod:`.suite`: the TOML suite format (read, validate, defaults, CLI overrides).
- :mod:`.tomlw`: a minimal TOML writer (the resolved suite is written back as TOML).
- :mod:`.match`: closed-form GMACs of a configuration and ``--match gmacs``.
- :mod:`.grid`: a suite -> the list of points to measure (dedup, labels, sharding).
- :mod:`.inputs`: checks of whole-run inputs (weights, datasets, out dir) before measuring.
- :mod:`.accuracy`: per-point accuracy (ImageNet-style top-1/5, NYU-style depth metrics).
- :mod:`.store`: the run directory (append-only, fsync'd ``records.jsonl``).
- :mod:`.runner`: measures the points one by one, recording each with its status.
- :mod:`.merge`: joins shard outputs into one run.
"""
