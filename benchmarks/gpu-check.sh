#!/usr/bin/env bash
# The prepared GPU check (issue 13): one script, under 8 minutes on one GPU.
#
#   benchmarks/gpu-check.sh [--dry-run] [OUT]     (OUT default: gpu-out/)
#
# Runs, writing every output under OUT:
#   install.log        pip install --no-deps --no-build-isolation -e .   (the GPU machine has no network)
#   device.txt         nvidia-smi and torch's view of the device
#   tests.txt          the CUDA-parametrised tests (pytest -k cuda)
#   devices-*.txt      bpcheck devices on trask, mlp and cnn for the pairs
#                        cpu:float64  / cuda:float32:tf32=off
#                        cpu:float64  / cuda:float32:tf32=on
#                        cuda:float32 / cuda:bfloat16
#                        cuda:float32 / cuda:float32, --repeat 3 (the nondeterminism floor)
#                      and devices-*.csv, their full reports
#   bench-wide.txt     benchmarks/bench.py's wide-layer target (--only 3) on cuda
#   status.txt         one line per step: its exit status and seconds
# Exit status: 0 when every step exited 0, else 1 (status.txt says which).
#
# --dry-run: the same steps on the CPU (cuda -> cpu, tf32 options dropped, trask only,
# 2 steps, the tests only collected, the benchmark and the install skipped): CI
# runs it (tests/test_gpu_check.py) so that the script cannot rot between GPU loans.
set -u
DRY=0
OUT=gpu-out
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        -*) echo "gpu-check.sh: unknown option $arg" >&2; exit 2 ;;
        *) OUT=$arg ;;
    esac
done
cd "$(dirname "$0")/.." || exit 2
mkdir -p "$OUT" || exit 2
: > "$OUT/status.txt"
PY=${PYTHON:-python}
FAILED=0
BP="import sys; from bpcheck.cli import main; sys.exit(main(sys.argv[1:]))"

step() {  # step NAME LOGFILE LIMIT_S COMMAND...: run with a time limit, record status and seconds
    local name=$1 log=$2 limit=$3
    shift 3
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$log" 2>&1
    local rc=$?
    echo "$name rc=$rc ${log} $((SECONDS - t0))s" >> "$OUT/status.txt"
    [ "$rc" -eq 0 ] || FAILED=1
    return 0
}

CASES="trask mlp cnn"
if [ "$DRY" -eq 1 ]; then
    DEV=cpu; STEPS=2; CASES=trask
    echo "dry run: install skipped" > "$OUT/install.log"
    step device device.txt 60 "$PY" -c "import torch; print('dry run on', torch.__version__, 'cpu')"
    step tests tests.txt 120 "$PY" -m pytest -q -p no:randomly --collect-only -k cuda tests/test_devices.py
else
    DEV=cuda; STEPS=200
    step install install.log 120 "$PY" -m pip install --no-deps --no-build-isolation -e .
    step device device.txt 60 bash -c "nvidia-smi; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'"
    step tests tests.txt 240 "$PY" -m pytest -q -p no:randomly -k cuda tests/
fi

cfg() {  # cfg DEVICE:DTYPE[:OPTIONS]: the dry run drops the tf32 options (CPU)
    if [ "$DRY" -eq 1 ]; then echo "${1%%:tf32=*}" | sed "s/^cuda/cpu/"; else echo "$1"; fi
}

for case in $CASES; do
    step "devices $case f64/f32-tf32off" "devices-$case-f64-f32tf32off.txt" 120 \
        "$PY" -c "$BP" devices "$case" --a "$(cfg cpu:float64)" --b "$(cfg $DEV:float32:tf32=off)" --steps $STEPS \
        --csv "$OUT/devices-$case-f64-f32tf32off.csv" --force
    step "devices $case f64/f32-tf32on" "devices-$case-f64-f32tf32on.txt" 120 \
        "$PY" -c "$BP" devices "$case" --a "$(cfg cpu:float64)" --b "$(cfg $DEV:float32:tf32=on)" --steps $STEPS \
        --csv "$OUT/devices-$case-f64-f32tf32on.csv" --force
    step "devices $case f32/bf16" "devices-$case-f32-bf16.txt" 120 \
        "$PY" -c "$BP" devices "$case" --a "$(cfg $DEV:float32)" --b "$(cfg $DEV:bfloat16)" --steps $STEPS \
        --csv "$OUT/devices-$case-f32-bf16.csv" --force
    step "devices $case floor" "devices-$case-floor.txt" 120 \
        "$PY" -c "$BP" devices "$case" --a "$(cfg $DEV:float32)" --b "$(cfg $DEV:float32)" --repeat 3 \
        --steps $STEPS --csv "$OUT/devices-$case-floor.csv" --force
done

if [ "$DRY" -eq 1 ]; then
    echo "dry run: would run $PY benchmarks/bench.py --only 3 --device cuda --quick" > "$OUT/bench-wide.txt"
    echo "bench skipped(dry) bench-wide.txt 0s" >> "$OUT/status.txt"
else
    step bench bench-wide.txt 180 "$PY" benchmarks/bench.py --only 3 --device cuda --quick
fi
cat "$OUT/status.txt"
exit $FAILED
