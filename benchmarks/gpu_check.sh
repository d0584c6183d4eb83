#!/usr/bin/env bash
# The engine's CUDA check in one run: bash benchmarks/gpu_check.sh RESULTS_DIR
#
# 1. the environment (python, torch, CUDA, the GPU and its memory);
# 2. the CUDA tests (pytest -m cuda tests/test_cuda.py, JUnit XML);
# 3. bench of a CIFAR-10 ResNet-110 and an ImageNet ResNet-50 (random weights): forward ceiling,
#    reference loop, the engine by default and with each speed option; then torch.compile for
#    each model in a run of its own (its compilation may take minutes, so it goes last);
# 4. kNN sigma(x) for 10,000 points against 50,000 x 3,072 training points;
# 5. summary.json and a table of the goals (met / missed, with the numbers).
#
# Everything goes into RESULTS_DIR: log.txt (all output), cuda-tests.xml, bench-*.json,
# knn-sigma.json, summary.json (8 files at most; in CPU mode the compile runs are skipped). Each step runs under a time limit taken from
# a total of GPU_CHECK_SECONDS (default 465, under 8 minutes), so a slow step cannot starve the
# ones after it; bench stops itself inside its limit (--budget). Without a CUDA device (or with
# GPU_CHECK_MODE=cpu) it runs in CPU mode: the CUDA cases skip with their reason, the benches run
# tiny sizes on the CPU; those are not GPU numbers. PYTHON picks the interpreter (default:
# .venv/bin/python where it imports torch, else python3). Needs no streamlit or plotly.
set -euo pipefail

if [[ $# -ne 1 || -z "$1" ]]; then
    echo "usage: bash benchmarks/gpu_check.sh RESULTS_DIR" >&2
    exit 2
fi
mkdir -p "$1"
RESULTS=$(cd "$1" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
STEPS="$WORK/steps.tsv"
: > "$STEPS"
TOTAL=${GPU_CHECK_SECONDS:-465}

# name, cap (s), least useful time (s): a step's limit is its cap or what the total leaves after
# the least useful times of the steps after it; below its own least useful time it is skipped.
STEP_PLAN=(
    "environment 60 10"
    "cuda-tests 90 30"
    "bench-cifar10-resnet110 120 60"
    "bench-imagenet-resnet50 120 60"
    "knn-sigma 40 15"
    "bench-cifar10-resnet110-compile 90 45"
    "bench-imagenet-resnet50-compile 80 45"
    "summary 15 10"
)

step_limit() {  # step_limit NAME: the seconds NAME may run now (0: skip it)
    local name=$1 cap=0 least=0 after=0 seen=0 entry n c l
    for entry in "${STEP_PLAN[@]}"; do
        read -r n c l <<< "$entry"
        if (( seen )); then after=$(( after + l )); fi
        if [[ $n == "$name" ]]; then cap=$c least=$l seen=1; fi
    done
    local left=$(( TOTAL - SECONDS - after ))
    (( left < cap )) && cap=$left
    (( cap < least )) && cap=0
    echo "$cap"
}

run_step() {  # run_step NAME [--budgeted] COMMAND...: run under the step's limit, record, never abort
    local name=$1; shift
    local limit start rc status budgeted=0
    if [[ ${1:-} == --budgeted ]]; then budgeted=1; shift; fi
    limit=$(step_limit "$name")
    echo
    echo "=== $name (limit ${limit} s, ${SECONDS} s into the check) ==="
    if (( limit == 0 )); then
        echo "$name: skipped: too little of the ${TOTAL} s total is left"
        printf '%s\t%s\t%s\t%s\t%s\n' "$name" skipped -1 0 0 >> "$STEPS"
        return 0
    fi
    local command=("$@")
    if (( budgeted )); then  # bench measures within the limit, less its imports and set-up
        command+=(--budget "$(( limit > 40 ? limit - 30 : 10 ))")
    fi
    echo "+ ${command[*]}"
    start=$SECONDS
    if timeout --kill-after=10 "$limit" "${command[@]}" < /dev/null; then rc=0; else rc=$?; fi
    case $rc in
        0) status=ok ;;
        124|137) status="timed out" ;;
        *) status=failed ;;
    esac
    echo "--- $name: $status (exit $rc) in $(( SECONDS - start )) s"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(( SECONDS - start ))" "$limit" >> "$STEPS"
}

skip_step() {  # skip_step NAME REASON: record a step that does not run here, saying why
    echo
    echo "=== $1: skipped: $2"
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" skipped -1 0 0 >> "$STEPS"
}

main() {
    if [[ -n "${PYTHON:-}" ]]; then
        PY=$PYTHON
    elif [[ -x .venv/bin/python ]] && .venv/bin/python -c \
            "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)" 2>/dev/null; then
        PY=.venv/bin/python
    else
        PY=python3
    fi
    echo "gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ), repository $PWD, results $RESULTS, python $PY"
    run_step environment "$PY" benchmarks/gpu_check.py env "$WORK/env.json"
    if [[ ! -s $WORK/env.json ]]; then
        echo "gpu_check: $PY cannot report the environment (does it import torch?); nothing can run"
        echo "gpu_check: set PYTHON to an interpreter with torch"
        return 1
    fi
    local detected=cpu
    if grep -q '"cuda_available": true' "$WORK/env.json"; then detected=cuda; fi
    MODE=${GPU_CHECK_MODE:-$detected}
    if [[ $MODE == cpu ]]; then
        echo "gpu_check: CPU MODE: no CUDA device (torch.cuda.is_available() is False or GPU_CHECK_MODE=cpu)."
        echo "gpu_check: the CUDA cases skip with their reason; the benches run tiny sizes on the CPU:"
        echo "gpu_check: these are not GPU numbers."
    fi

    if "$PY" -c "import pytest" 2>/dev/null; then
        run_step cuda-tests "$PY" -m pytest -m cuda tests/test_cuda.py -q -rs -p no:cacheprovider \
            -o junit_family=xunit1 --junitxml "$RESULTS/cuda-tests.xml"
    else
        echo "gpu_check: pytest is NOT installed for $PY: the CUDA tests cannot run (install pytest)"
        printf '%s\t%s\t%s\t%s\t%s\n' cuda-tests "no pytest" -1 0 0 >> "$STEPS"
    fi

    local bench=("$PY" -m smoothviz bench --solver-points 0 --db "$WORK/gpu-check.db")
    local r110 r50 v110 v50 c110 c50 knn
    if [[ $MODE == cuda ]]; then
        r110=(--device cuda --model resnet110 --n 40000 --points 2 --repeats 2)
        r50=(--device cuda --model resnet50 --n 3000 --points 2 --repeats 2)
        v110="default,channels_last,cuda-graphs,channels_last+cuda-graphs,batch-auto,fast-bf16,fast-fp16"
        v110+=",fast-fp16+channels_last,fast-fp16+channels_last+cuda-graphs,fast-bf16+channels_last+cuda-graphs"
        v50="default,channels_last,cuda-graphs,batch-auto,fast-bf16,fast-fp16,fast-fp16+channels_last"
        v50+=",fast-bf16+channels_last,fast-fp16+channels_last+cuda-graphs"
        c110=(--ceiling-batches 8192)  # the compile runs: one ceiling at the engine's batch
        c50=(--ceiling-batches 256)
        knn=(--device cuda --knn-synthetic 50000,10000 --repeats 3)
    else
        local cpu=(--device cpu --allow-cpu-resnet --points 1 --repeats 1 --threads 1)
        r110=("${cpu[@]}" --model resnet110 --n 8 --batch-size 8 --ceiling-batches 8)
        r50=("${cpu[@]}" --model resnet50 --n 1 --batch-size 1 --ceiling-batches 1)
        v110="default,fast-bf16,cuda-graphs" v50="default,fast-bf16"
        c110=() c50=()
        knn=(--device cpu --knn-synthetic 1000,50 --repeats 1 --threads 1)
    fi

    run_step bench-cifar10-resnet110 --budgeted "${bench[@]}" "${r110[@]}" --variants "$v110" \
        --out "$RESULTS/bench-cifar10-resnet110.json"
    run_step bench-imagenet-resnet50 --budgeted "${bench[@]}" "${r50[@]}" --variants "$v50" \
        --out "$RESULTS/bench-imagenet-resnet50.json"
    run_step knn-sigma "${bench[@]}" "${knn[@]}" --out "$RESULTS/knn-sigma.json"
    if [[ $MODE == cuda ]]; then
        run_step bench-cifar10-resnet110-compile --budgeted "${bench[@]}" "${r110[@]}" "${c110[@]}" \
            --variants compile --out "$RESULTS/bench-cifar10-resnet110-compile.json"
        run_step bench-imagenet-resnet50-compile --budgeted "${bench[@]}" "${r50[@]}" "${c50[@]}" \
            --variants compile --out "$RESULTS/bench-imagenet-resnet50-compile.json"
    else
        local why="CPU mode: inductor's C++ build of a ResNet takes minutes on a CPU; this run is for the GPU"
        skip_step bench-cifar10-resnet110-compile "$why"
        skip_step bench-imagenet-resnet50-compile "$why"
    fi

    echo
    echo "=== summary ($(( SECONDS )) s into the check) ==="
    if ! timeout 30 "$PY" benchmarks/gpu_check.py summary "$RESULTS" "$STEPS" "$WORK/env.json"; then
        echo "gpu_check: the summary failed; the steps' own files and this log hold the numbers"
    fi
    echo "gpu_check: done in $(( SECONDS )) s; files in $RESULTS: $(cd "$RESULTS" && ls | tr '\n' ' ')"
}

main 2>&1 | tee "$RESULTS/log.txt"
exit "${PIPESTATUS[0]}"
