#!/usr/bin/env bash
# GPU check: what CPU tests cannot run, measured on one GPU in <= 8 minutes (an H100: the lab's target).
#
#   bash benchmarks/gpu_check.sh           # from anywhere, virtual environment active; needs CUDA
#   bash benchmarks/gpu_check.sh --plan    # the steps and their time limits; needs no GPU
#
# Every step has its own time limit (`timeout`); a step that fails or overruns is recorded as such and
# the next step runs. The limits add up to at most 480 s, the C++ extension build included (step 1
# builds it once; the test step then loads it). Each step writes its figures into the "GPU check"
# section of BENCHMARKS.md as it measures them (device, driver, CUDA, Triton and torch versions in the
# section's first line), and this script appends each step's outcome as soon as the step ends.
# GPU_CHECK_OUT=FILE writes another file; GPU_CHECK_ARGS="--device cpu --tiny" runs the benchmark steps'
# code at smoke sizes on CPU (their figures are then meaningless).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${GPU_CHECK_OUT:-BENCHMARKS.md}
read -r -a STEP_ARGS <<< "${GPU_CHECK_ARGS:-}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
BUDGET_S=480

# number | limit (s) | title | command (after $PY; benchmark steps also get --out and GPU_CHECK_ARGS)
STEPS=(
    "1|70|machine, C++ extension build, first Triton compile|benchmarks/gpu_machine.py"
    "2|30|host syncs per training step|benchmarks/gpu_syncs.py"
    "3|115|gpu-marked tests (2-GPU NCCL DDP tests skip below 2 GPUs)|-m pytest -q -m gpu -p no:cacheprovider tests/"
    "4|50|PSSA kernels against cuDNN 3x3, stage shapes, batch 64/128|benchmarks/gpu_kernels.py"
    "5|45|training throughput, eager: ResNet-50 torchvision / all-conv / PSSA stage 3 / all stages|benchmarks/gpu_train.py"
    "6|35|Lightning loop against a bare loop|benchmarks/gpu_train.py --loops"
    "7|25|deploy latency, batch 1 and 64|benchmarks/gpu_deploy.py"
    "8|95|training throughput, torch.compile (inductor)|benchmarks/gpu_train.py --compiled"
)

if [[ "${1:-}" == "--plan" ]]; then
    total=0
    for step in "${STEPS[@]}"; do
        IFS='|' read -r n limit title cmd <<< "$step"
        printf '%2s. %4s s  %s: %s %s\n' "$n" "$limit" "$title" "$PY" "$cmd"
        total=$((total + limit))
    done
    echo "total ${total} s of the ${BUDGET_S} s budget (one GPU)"
    exit 0
elif [[ $# -gt 0 ]]; then
    echo "gpu_check.sh: unknown argument '$1'; expected --plan or nothing" >&2
    exit 2
fi

failed=0
for step in "${STEPS[@]}"; do
    IFS='|' read -r n limit title cmd <<< "$step"
    echo
    echo "== ${n}. ${title} (limit ${limit} s, $(date +%T))"
    read -r -a argv <<< "$cmd"
    [[ "$cmd" == benchmarks/* ]] && argv+=(--out "$OUT" "${STEP_ARGS[@]}")
    log=$(mktemp)
    start=$(date +%s.%N)
    timeout --kill-after=5 "$limit" "$PY" "${argv[@]}" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
        0) outcome="ok" ;;
        124|137) outcome="OVERRAN its limit (stopped)"; failed=1 ;;
        *) outcome="FAILED (exit ${rc})"; failed=1 ;;
    esac
    if [[ "$cmd" != benchmarks/* ]]; then  # the tests: their summary line is the figure
        printf '\n### %s. %s\n\n`%s`\n' "$n" "$title" "$(grep -E '(passed|failed|skipped|error)' "$log" | tail -n 1)" >> "$OUT"
    fi
    printf '\nStep %s (%s): %s after %s s of its %s s limit.\n' "$n" "$title" "$outcome" "$seconds" "$limit" >> "$OUT"
    rm -f "$log"
done
echo
echo "gpu_check: $([[ $failed == 0 ]] && echo "every step passed" || echo "some steps failed or overran"); see ${OUT}"
exit $failed
