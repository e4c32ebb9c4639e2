#!/usr/bin/env bash
# Every GPU-only test and the GPU benchmarks in one command, with one summary table at the end.
#
#   bash scripts/gpu_check.sh
#
# What it runs (in this order, each step under its own `timeout`, the whole run
# within GPU_CHECK_BUDGET_S seconds, 560 by default; a step that no longer fits
# is reported SKIP, never started):
#   - the GPU-only tests of test/test_engines_*.py (one table row per test);
#   - pi0-tiny and pi0-mid: a random checkpoint (`vla-ros make-tiny`), a bf16
#     artifact (`vla-ros export`), `vla-ros bench` with the suffix eager and as a
#     CUDA graph (and their ratio), the prefix via onnxruntime's CUDA provider and
#     via the native TensorRT engine (`export --tensorrt`), each of those required
#     to hand the K/V over by address (0 copies);
#   - full-size pi0 and pi0.5 when the GPU has the memory: suffix eager vs CUDA
#     graph (their prefix export and engine build do not fit the budget);
#   - pi05-tiny: suffix eager vs CUDA graph;
#   - pi0fast-tiny (and full-size pi0fast when it fits): the decode step eager
#     vs replayed as a CUDA graph, time per token.
# Without CUDA it says so, lists the checks and exits 0; without the `tensorrt`
# module the TensorRT rows are SKIP with the reason. It never downloads anything
# (the GPU machine has no internet) and uses .venv/bin/python when present,
# else python3 (GPU_CHECK_PYTHON overrides). Exit status: 0 when no row is
# FAIL, 1 otherwise, 2 when Python cannot import torch. Logs and JSON figures
# stay in GPU_CHECK_DIR (default: a new folder under /tmp). The budget counts
# from the start, probes included: the whole run stays under 10 minutes.

set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
    PY="$GPU_CHECK_PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then
    PY="$ROOT/.venv/bin/python"
else
    PY="$(command -v python3 || echo python3)"
fi
BUDGET_S="${GPU_CHECK_BUDGET_S:-560}"
FULL_MIN_FREE_GIB="${GPU_CHECK_FULL_MIN_FREE_GIB:-24}"
WORK="${GPU_CHECK_DIR:-${TMPDIR:-/tmp}/vla_gpu_check.WORK}"  # made (mktemp) only when something runs
ROWS="$WORK/rows.tsv"
START=$SECONDS
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PIP_NO_INDEX=1 HF_HUB_OFFLINE=1  # offline machine: nothing may try to download

MODE=run
TRT_REASON=""   # why the TensorRT rows are skipped (empty: tensorrt importable)
ORT_REASON=""   # why the onnxruntime CUDA rows are skipped
FULL_REASON=""  # why the full-size rows are skipped

slug() { printf '%s' "$1" | tr -c 'A-Za-z0-9._-' '_'; }

row() {  # name kind result path note seconds expect
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6:-}" "${7:-}" >>"$ROWS"
}

# check NAME KIND LIMIT_S MIN_S PATH EXPECT -- COMMAND...
#   Runs COMMAND under `timeout`, at most LIMIT_S seconds and never past the budget;
#   SKIP when less than MIN_S seconds of the budget are left. Returns COMMAND's success.
check() {
    local name=$1 kind=$2 limit=$3 min=$4 path=$5 expect=$6
    shift 6
    [ "${1:-}" = "--" ] && shift
    if [ "$MODE" = list ]; then
        printf '  %-40s %s\n' "$name" "$*"
        return 0
    fi
    local left=$((BUDGET_S - (SECONDS - START)))
    if ((left < min)); then
        row "$name" "$kind" SKIP "$path" "only ${left} s of the ${BUDGET_S} s budget left (needs ${min} s)" "" "$expect"
        return 1
    fi
    ((limit > left)) && limit=$left
    local log="$WORK/logs/$(slug "$name").log" began=$SECONDS rc
    echo "[gpu_check $((SECONDS - START)) s] $name (limit ${limit} s)" >&2
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1 </dev/null
    rc=$?
    local took=$((SECONDS - began))
    if ((rc == 0)); then
        row "$name" "$kind" PASS "$path" "" "$took" "$expect"
        return 0
    fi
    local note
    if ((rc == 124 || rc == 137)); then
        note="timed out after ${limit} s (log: $log)"
    else
        note="exit $rc: $(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-200) (log: $log)"
    fi
    row "$name" "$kind" FAIL "$path" "$note" "$took" "$expect"
    return 1
}

# skip NAME KIND REASON: a row that is not run, with the reason (also shown in the listing).
skip() {
    if [ "$MODE" = list ]; then
        printf '  %-40s (skipped here: %s)\n' "$1" "$3"
        return 0
    fi
    row "$1" "$2" SKIP "" "$3"
}

VLA=("$PY" -m vla_ros)  # `vla-ros` of this checkout, runnable under `timeout`

# suffix_pair CONFIG RUNS WARMUP LIMIT MIN: eager and CUDA-graph suffix benchmarks and their ratio.
suffix_pair() {
    local cfg=$1 runs=$2 warmup=$3 limit=$4 min=$5 dir="$WORK/$1" ran=0
    [ "$MODE" = run ] && mkdir -p "$dir"
    local bench=(bench --config "$cfg" --device cuda --runs "$runs" --warmup "$warmup")
    check "$cfg suffix eager" bench "$limit" "$min" "$dir/suffix_eager.json" "" -- \
        "${VLA[@]}" "${bench[@]}" --suffix eager --json "$dir/suffix_eager.json" && ran=$((ran + 1))
    check "$cfg suffix cuda_graph" bench "$limit" "$min" "$dir/suffix_graph.json" "" -- \
        "${VLA[@]}" "${bench[@]}" --suffix cuda_graph --json "$dir/suffix_graph.json" && ran=$((ran + 1))
    [ "$MODE" = run ] || return 0
    if ((ran == 2)); then
        row "$cfg suffix cuda_graph vs eager" compare PASS "$dir/suffix_graph.json,$dir/suffix_eager.json" ""
    else
        row "$cfg suffix cuda_graph vs eager" compare SKIP "" "one side did not run (see its row)"
    fi
}

# decode_pair CONFIG RUNS WARMUP LIMIT MIN: the decode step eager and as a CUDA graph, per token.
decode_pair() {
    local cfg=$1 runs=$2 warmup=$3 limit=$4 min=$5 dir="$WORK/$1" ran=0
    [ "$MODE" = run ] && mkdir -p "$dir"
    local bench=(bench --config "$cfg" --device cuda --runs "$runs" --warmup "$warmup" --decode-tokens 64)
    check "$cfg decode eager" bench "$limit" "$min" "$dir/decode_eager.json" "" -- \
        "${VLA[@]}" "${bench[@]}" --suffix eager --json "$dir/decode_eager.json" && ran=$((ran + 1))
    check "$cfg decode cuda_graph" bench "$limit" "$min" "$dir/decode_graph.json" "" -- \
        "${VLA[@]}" "${bench[@]}" --suffix cuda_graph --json "$dir/decode_graph.json" && ran=$((ran + 1))
    [ "$MODE" = run ] || return 0
    if ((ran == 2)); then
        row "$cfg decode cuda_graph vs eager" compare PASS "$dir/decode_graph.json,$dir/decode_eager.json" ""
    else
        row "$cfg decode cuda_graph vs eager" compare SKIP "" "one side did not run (see its row)"
    fi
}

# artifact_checks CONFIG LIMIT: checkpoint, bf16 exports, prefix benchmarks through both runtimes.
artifact_checks() {
    local cfg=$1 limit=$2 dir="$WORK/$1"
    [ "$MODE" = run ] && mkdir -p "$dir"
    local ckpt="$dir/checkpoint" onnx_art="$dir/artifact_onnx" trt_art="$dir/artifact_tensorrt"
    if ! check "$cfg checkpoint (make-tiny)" plain 120 30 "" "" -- \
        "${VLA[@]}" make-tiny --config "$cfg" --out "$ckpt" --force; then
        skip "$cfg prefix onnxruntime" bench "no checkpoint (see the make-tiny row)"
        skip "$cfg prefix TensorRT" bench "no checkpoint (see the make-tiny row)"
        return 0
    fi
    if [ -n "$ORT_REASON" ]; then
        skip "$cfg prefix onnxruntime" bench "$ORT_REASON"
    elif check "$cfg export bf16 (onnxruntime)" plain "$limit" 30 "" "" -- \
        "${VLA[@]}" export --checkpoint "$ckpt" --out "$onnx_art" --precision bf16 --overwrite; then
        check "$cfg prefix onnxruntime" bench "$limit" 30 "$dir/prefix_onnx.json" onnxruntime -- \
            "${VLA[@]}" bench --checkpoint "$ckpt" --artifacts "$onnx_art" --engine onnx --device cuda \
            --precision bf16 --json "$dir/prefix_onnx.json"
    else
        skip "$cfg prefix onnxruntime" bench "the export failed (see its row)"
    fi
    if [ -n "$TRT_REASON" ]; then
        skip "$cfg export bf16 --tensorrt" plain "$TRT_REASON"
        skip "$cfg prefix TensorRT" bench "$TRT_REASON"
    elif check "$cfg export bf16 --tensorrt" plain "$((limit + 120))" 60 "" "" -- \
        "${VLA[@]}" export --checkpoint "$ckpt" --out "$trt_art" --precision bf16 --tensorrt --workspace-gib 4 --overwrite; then
        check "$cfg prefix TensorRT" bench "$limit" 30 "$dir/prefix_tensorrt.json" tensorrt -- \
            "${VLA[@]}" bench --checkpoint "$ckpt" --artifacts "$trt_art" --engine tensorrt --device cuda \
            --precision bf16 --json "$dir/prefix_tensorrt.json"
    else
        skip "$cfg prefix TensorRT" bench "the --tensorrt export failed (see its row)"
    fi
    return 0
}

plan() {
    check "GPU-only tests" pytest 300 60 "$WORK/gpu_tests.xml" "" -- \
        "$PY" -m pytest test/test_engines_onnx.py test/test_engines_suffix.py test/test_engines_pipeline.py \
        test/test_engines_gpu_paths.py test/test_export_fast.py -k "(gpu or cuda or tensorrt) and not gpu_check" \
        -p no:cacheprovider -q -rs --junitxml="$WORK/gpu_tests.xml"
    artifact_checks pi0-tiny 120
    suffix_pair pi0-tiny 20 3 120 30
    artifact_checks pi0-mid 150
    suffix_pair pi0-mid 20 3 150 40
    if [ -n "$FULL_REASON" ]; then
        for cfg in pi0 pi05; do
            skip "$cfg suffix eager" bench "$FULL_REASON"
            skip "$cfg suffix cuda_graph" bench "$FULL_REASON"
        done
    else
        suffix_pair pi0 5 2 180 90
        suffix_pair pi05 5 2 180 90
    fi
    for cfg in pi0 pi05; do
        skip "$cfg prefix onnxruntime / TensorRT" bench \
            "a full-size export and engine build do not fit the budget: vla-ros export --tensorrt, then bench --artifacts"
    done
    suffix_pair pi05-tiny 20 3 120 30
    decode_pair pi0fast-tiny 10 2 120 30
    if [ -n "$FULL_REASON" ]; then
        skip "pi0fast decode eager" bench "$FULL_REASON"
        skip "pi0fast decode cuda_graph" bench "$FULL_REASON"
    else
        decode_pair pi0fast 3 1 180 90
    fi
}

# -- what this machine has --------------------------------------------------------------------------
PROBE=$(timeout 120 "$PY" - <<'EOF' 2>&1
import torch
if not torch.cuda.is_available():
    print(f"nocuda torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'}) sees no CUDA device")
else:
    free, total = torch.cuda.mem_get_info()
    print(f"cuda {free / 2**30:.0f} {total / 2**30:.0f} {torch.cuda.get_device_name()} / torch {torch.__version__}")
EOF
)
PROBE_RC=$?
if ((PROBE_RC != 0)) || { [[ "$PROBE" != cuda* ]] && [[ "$PROBE" != nocuda* ]]; }; then
    echo "gpu_check: $PY cannot import torch (exit $PROBE_RC): $(printf '%s' "$PROBE" | tail -n 1)"
    echo "gpu_check: install the project first (scripts/bootstrap.sh); nothing was run"
    exit 2
fi
PROBE=$(printf '%s' "$PROBE" | tail -n 1)

if [[ "$PROBE" == nocuda* ]]; then
    echo "gpu_check: no CUDA device: ${PROBE#nocuda }; nothing to run here."
    echo "gpu_check: on a machine with CUDA, 'bash scripts/gpu_check.sh' runs these checks (${BUDGET_S} s budget):"
    MODE=list
    plan
    echo "gpu_check: one table row per check (name, PASS/FAIL/SKIP, figure, note); the GPU-only tests get a row each."
    exit 0
fi

if [ -z "${GPU_CHECK_DIR:-}" ]; then
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/vla_gpu_check.XXXXXX")"
    ROWS="$WORK/rows.tsv"
fi
mkdir -p "$WORK/logs"
: >"$ROWS"
read -r _ FREE_GIB TOTAL_GIB GPU_NAME <<<"$PROBE"
echo "gpu_check: $GPU_NAME, ${FREE_GIB} of ${TOTAL_GIB} GiB free; python: $PY; work dir: $WORK" >&2
TRT_PROBE=$(timeout 60 "$PY" -c 'import tensorrt; print(tensorrt.__version__)' 2>&1)
if (($? != 0)); then
    TRT_REASON="no tensorrt module ($(printf '%s' "$TRT_PROBE" | tail -n 1 | cut -c1-120))"
fi
ORT_PROBE=$(timeout 60 "$PY" -c 'import onnxruntime as o; print(o.__version__, " ".join(o.get_available_providers()))' 2>&1)
if (($? != 0)); then
    ORT_REASON="onnxruntime is not importable ($(printf '%s' "$ORT_PROBE" | tail -n 1 | cut -c1-120))"
elif [[ "$ORT_PROBE" != *CUDAExecutionProvider* ]]; then
    ORT_REASON="onnxruntime has no CUDA provider (install onnxruntime-gpu): $ORT_PROBE"
fi
if ((FREE_GIB < FULL_MIN_FREE_GIB)); then
    FULL_REASON="${FREE_GIB} GiB free on the GPU, full size needs ${FULL_MIN_FREE_GIB} GiB"
fi
echo "gpu_check: onnxruntime ${ORT_PROBE:-?}; tensorrt ${TRT_REASON:-$TRT_PROBE}" >&2

plan
echo
echo "gpu_check: $GPU_NAME, $(( SECONDS - START )) s (budget ${BUDGET_S} s); logs and figures in $WORK"
timeout 60 "$PY" "$ROOT/scripts/gpu_check_report.py" "$ROWS"
