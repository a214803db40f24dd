#!/usr/bin/env bash
# Every GPU figure of issue #30 ("every method at its fastest on a GPU") in one call of at
# most 8 minutes (a borrowed GPU is lent by the minute). Steps run in order of importance;
# each gets what is left of the deadline, so a slow step cuts the ones after it short
# instead of losing the whole call. Each step's log and run directory stay under OUTDIR,
# whatever the step's exit code, with env.json in every run directory.
#
#   1. the CUDA tests: the Triton selector (both forms) and ToMe's biased-attention
#      backends against float64, every method on the GPU against the CPU, compiled points
#      with CUDA graphs, timing/memory/energy on CUDA;
#   2. every method, DeiT-S, keep 0.5 (ToMe r = 8), batch 256, fp16, eager: the must-hold
#      speed-ups, and the kernels each ran (kernel_paths: the Triton form timed fastest,
#      the attention backend ToMe's bias took);
#   3. the A/A check in fp16 (dense vs its twin, ToSA and random at keep 1.0: 1.00 +- 2%);
#   4. where ToSA's time goes: the selectors' share of a forward against their MAC share
#      (tosa-bench profile, hooks, 5 passes);
#   5. every method at batch 64, eager and with CUDA graphs (reduce-overhead), each
#      against its dense twin compiled the same way;
#   6. the kernels alone: both Triton forms and the PyTorch ops for one selector, the
#      biased-attention backends, the map block's attention forms (CUDA events).
#
#   benchmarks/gpu_session.sh [OUTDIR [DEADLINE_S]]      # default runs/gpu-session, 470 s
#
# PYTHON picks the interpreter (default python3). On a machine without the package
# installed, run from the checkout with PYTHONPATH=. (plus any missing pure-Python
# dependencies on the path).
set -u
OUTDIR=${1:-runs/gpu-session}
DEADLINE=${2:-470}
PY=${PYTHON:-python3}
T0=$(date +%s)
mkdir -p "$OUTDIR/logs"

step() {  # step NAME LIMIT_S CMD...: run CMD for at most LIMIT_S (and what is left), log to OUTDIR/logs/NAME.log
    local name=$1 limit=$2 left start rc
    shift 2
    left=$(( DEADLINE - ($(date +%s) - T0) ))
    (( left < limit )) && limit=$left
    if (( limit < 15 )); then echo "== $name: skipped, ${left}s left of ${DEADLINE}s"; return; fi
    start=$(date +%s)
    echo "== $name (at most ${limit}s, from +$((start - T0))s)"
    timeout --kill-after=5 "$limit" "$@" >"$OUTDIR/logs/$name.log" 2>&1
    rc=$?
    echo "   exit $rc after $(( $(date +%s) - start ))s$([ $rc = 124 ] && echo ' (time limit)')"
    tail -n 6 "$OUTDIR/logs/$name.log" | sed 's/^/   | /'
}

S="deit_small_patch16_224"
step env 20 "$PY" -c "
import platform, torch
p = torch.cuda.get_device_properties(0)
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())
print(p.name, f'{p.total_memory / 2**30:.1f} GiB', p.multi_processor_count, 'SMs')"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu,utilization.gpu --format=csv \
    >"$OUTDIR/logs/nvidia-smi.csv" 2>&1 && sed 's/^/   | /' "$OUTDIR/logs/nvidia-smi.csv"

step tests-cuda 100 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu_paths.py tests/test_selector_triton.py tests/test_biased_attention.py \
    tests/test_memory.py tests/test_timing.py tests/test_env.py tests/test_energy.py "tests/test_compiled.py::test_compiled_points_on_a_gpu"
step methods-b256 80 "$PY" -m tosa_bench sweep --model $S --device cuda --batch-size 256 --dtype fp16 --keep 0.5 --no-latency \
    --out "$OUTDIR/methods-deit-s-b256-fp16"
step aa-fp16 50 "$PY" benchmarks/aa_check.py --device cuda --suite gpu-speed --dtype fp16 --repeats 5 --out "$OUTDIR/aa-gpu-fp16"
step profile-tosa 30 "$PY" -m tosa_bench profile --model $S --variant tosa --keep 0.5 --device cuda --batch-size 256 --dtype fp16
step methods-b64-cudagraphs 150 "$PY" -m tosa_bench sweep --model $S --device cuda --batch-size 64 --dtype fp16 --keep 0.5 --no-latency \
    --compile-mode eager,reduce-overhead --out "$OUTDIR/methods-deit-s-b64-fp16-cudagraphs"
step kernels 40 "$PY" benchmarks/selector_gpu.py --batch-size 256 --part kernels
echo "== done at +$(( $(date +%s) - T0 ))s"
for f in "$OUTDIR"/*/table.md "$OUTDIR"/*/summary.md; do [ -f "$f" ] && { echo "--- $f"; cat "$f"; }; done
