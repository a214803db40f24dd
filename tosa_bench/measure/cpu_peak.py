"""CPU peak memory of one point's forward, measured in a fresh Python process.

A resident-set high-water mark shows a forward's own peak only if buffers freed earlier do
not stay resident for reuse, and that needs glibc's mmap/trim thresholds pinned low
(:func:`~tosa_bench.measure.memory.freed_memory_returned_to_os`). Doing that in the
process that also times models goes wrong either way:

* pinned for good, every later buffer above 128 KiB is a fresh mmap that page-faults on
  each use, and timing slows (seconds of system time in the default sweep, and most for
  methods that allocate many mid-sized buffers);
* pinned only around the reading, the heap left by the timing before it makes the reading
  depend on what ran earlier (ToMe, DeiT-S, batch 8: 38 MiB on its own, 65-75 MiB after
  its timed rounds).

So the reading is taken in a child process that pins the thresholds before anything is
allocated, builds the point's model exactly as the sweep does (compiled in the point's
mode for a compiled point, the compile itself in the warm-up), runs one warm-up forward
(one-time allocations such as kernel caches are not the forward's) and then reads the
peak of one more forward. The number depends on the point alone, and the parent process
is left as it was. Cost: one interpreter start and model build per point (~2-4 s).

    python -m tosa_bench.measure.cpu_peak '<Point.config() as JSON>' THREADS
prints one JSON line: value_mib, reason, detail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tosa_bench.measure.memory import CPU_RSS_METHOD, MemoryReading

if TYPE_CHECKING:  # pragma: no cover
    # at run time spec is imported inside the child only: it imports torch, which must
    # come after the allocator thresholds are pinned
    from tosa_bench.measure.spec import Point

CPU_PEAK_METHOD = CPU_RSS_METHOD + ", in a fresh process after one warm-up forward"


def measure_cpu_peak(point: "Point", threads: int, timeout_s: float = 900.0) -> MemoryReading:
    """Peak RSS (MiB) of one forward of ``point`` on the CPU, from a child process using
    ``threads`` intra-op threads; unavailable with a reason if the child fails or times out
    (the sweep goes on either way)."""
    import os

    from tosa_bench.models.chunks import BUDGETS_ENV, known_budgets

    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    env[BUDGETS_ENV] = json.dumps(known_budgets())  # the child runs the chunks that were timed
    cmd = [sys.executable, "-m", "tosa_bench.measure.cpu_peak", json.dumps(point.config()), str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return MemoryReading(None, CPU_PEAK_METHOD, f"unavailable: the measuring process ran over {timeout_s:.0f} s")
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        if proc.returncode < 0:
            why = f"killed by signal {-proc.returncode} (out of memory?)"
        return MemoryReading(None, CPU_PEAK_METHOD, f"unavailable: the measuring process failed: {why}")
    d = json.loads(proc.stdout.strip().splitlines()[-1])
    return MemoryReading(d["value_mib"], CPU_PEAK_METHOD, d["reason"], d["detail"])


def _child(config: str, threads: int) -> dict:
    from tosa_bench.measure.memory import cpu_peak_rss, freed_memory_returned_to_os

    with freed_memory_returned_to_os():  # before anything is allocated, for the child's life
        import torch

        from tosa_bench.measure.spec import Point, build_point_model
        from tosa_bench.precision import autocast

        torch.set_num_threads(threads)
        point = Point(**json.loads(config))
        model = build_point_model(point)
        size = model.cfg.img_size
        images = torch.randn(point.batch_size, 3, size, size)
        device = torch.device("cpu")

        def forward() -> None:
            with torch.inference_mode(), autocast(point.dtype, device):
                model(images)

        if point.compile:  # the compiled model's forward: compiled (from inductor's cache) by the warm-up calls
            compiled = torch.compile(model, mode=point.compile)

            def forward() -> None:
                with torch.inference_mode(), autocast(point.dtype, device):
                    compiled(images)

            forward()
        forward()
        reading = cpu_peak_rss(forward)
    return {"value_mib": reading.value_mib, "reason": reading.reason, "detail": reading.detail}


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], int(sys.argv[2]))))
