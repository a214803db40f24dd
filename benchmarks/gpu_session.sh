#!/usr/bin/env bash
# The GPU figures of results/README.md in one call, within a time limit (a borrowed GPU is
# lent by the minute): the CUDA tests; where ToSA's time goes (benchmarks/selector_gpu.py);
# ToSA's share of its ideal speed-up per batch (64/128/256), rule and dtype, in fp16 with
# and without the Triton selector kernel; ToSA vs dense on DeiT-S/B at batch 256 fp16
# (suites/gpu-speed.toml, both rules); every method on DeiT-S at batch 256 fp16; the A/A
# check in fp16. Steps run in order of importance; each gets what is left of the
# deadline, so a slow step cuts the ones after it short instead of losing the whole call.
# Each step's log and run directory stay under OUTDIR, whatever the step's exit code.
#
#   benchmarks/gpu_session.sh [OUTDIR [DEADLINE_S]]      # default runs/gpu-session, 520 s
#
# PYTHON picks the interpreter (default python3); SELECTOR_GPU_ARGS adds options to
# benchmarks/selector_gpu.py (e.g. --no-alternatives once the alternatives are known). On a machine without the package
# installed, run from the checkout with PYTHONPATH=. (plus any missing pure-Python
# dependencies on the path).
set -u
OUTDIR=${1:-runs/gpu-session}
DEADLINE=${2:-520}
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

step env 30 "$PY" -c "
import platform, torch, timm
p = torch.cuda.get_device_properties(0)
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)
print(p.name, f'{p.total_memory / 2**30:.1f} GiB', p.multi_processor_count, 'SMs')"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu,utilization.gpu --format=csv \
    >"$OUTDIR/logs/nvidia-smi.csv" 2>&1 && sed 's/^/   | /' "$OUTDIR/logs/nvidia-smi.csv"

step tests-cuda 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu_paths.py tests/test_selector_triton.py tests/test_memory.py \
    tests/test_timing.py tests/test_point_record.py tests/test_env.py tests/test_variants.py tests/test_chunks.py
step selector-gpu 100 "$PY" benchmarks/selector_gpu.py --batch-size 256 ${SELECTOR_GPU_ARGS:-}
step grid-fp16 90 "$PY" benchmarks/tosa_speedup_grid.py --device cuda --dtypes fp16 --batch-sizes 64,128,256 \
    --out "$OUTDIR/tosa-speedup-gpu-grid"
step grid-fp16-pytorch-ops 90 env TOSA_BENCH_NO_GPU_SELECTOR_KERNEL=1 "$PY" benchmarks/tosa_speedup_grid.py --device cuda \
    --dtypes fp16 --batch-sizes 64,128,256 --out "$OUTDIR/tosa-speedup-gpu-grid-pytorch-ops"
step gpu-speed-mean 90 "$PY" -m tosa_bench sweep --suite gpu-speed --out "$OUTDIR/gpu-speed-mean"
step methods-deit-s 90 "$PY" -m tosa_bench sweep --model deit_small_patch16_224 --device cuda --batch-size 256 --dtype fp16 \
    --keep 0.5 --out "$OUTDIR/methods-deit-s-b256-fp16"
step grid-bf16 60 "$PY" benchmarks/tosa_speedup_grid.py --device cuda --dtypes bf16 --batch-sizes 64,128,256 \
    --out "$OUTDIR/tosa-speedup-gpu-grid"
step gpu-speed-cls 60 "$PY" -m tosa_bench sweep --suite gpu-speed --importance cls --out "$OUTDIR/gpu-speed-cls"
step aa-fp16 60 "$PY" benchmarks/aa_check.py --device cuda --suite gpu-speed --dtype fp16 --repeats 5 --out "$OUTDIR/aa-gpu-fp16"
echo "== done at +$(( $(date +%s) - T0 ))s"
for f in "$OUTDIR"/*/table.md "$OUTDIR"/*/summary.md; do [ -f "$f" ] && { echo "--- $f"; cat "$f"; }; done
