#!/usr/bin/env bash
# Issue 16's GPU check in one command: the torch backend's figures and accuracy on an NVIDIA GPU.
#   scripts/gpu-check.sh --prepare   on the CPU box (it has a package registry): builds build/gpu-check/,
#                                    a wheelhouse of what the GPU machine lacks (<= 30 MiB), the model's
#                                    cfg + weights and the test assets (48 MiB). Carry that one folder
#                                    only (data/models with its ONNX would pass the 64 MiB carry limit).
#   scripts/gpu-check.sh             on the GPU machine, from the repo root: installs what is missing from
#                                    the wheelhouse (no registry there), converts the model, runs
#                                    `pytest -m gpu`, `lookout bench --backend torch --bare` (images/s, ms per
#                                    batch, host CPU per frame, FP16 and FP32) and the accuracy check, and
#                                    writes summary.md (+ every step's log) under $OUT (default ./gpu-check-out).
#   scripts/gpu-check.sh --dry-run   the same on CPU torch with tiny batches and 2 iterations, no wheelhouse
#                                    (CI runs it so that the script cannot rot).
# Every step runs under `timeout`, and the whole run stops itself at DEADLINE_S (default 470 s), so a
# run that is cut short still writes the figures it has.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=run
STEP=""
case "${1:-}" in
  --prepare) MODE=prepare ;;
  --dry-run) MODE=dry ;;
  --step) MODE=${GPU_CHECK_MODE:?}; STEP=${2:?} ;;  # internal: one step, run under `timeout` by step()
  "") ;;
  *) echo "usage: scripts/gpu-check.sh [--prepare | --dry-run], got ${1@Q}" >&2; exit 2 ;;
esac

PREP=build/gpu-check
WHEELS=$PREP/wheelhouse
MAX_WHEELS_MIB=30
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ "$MODE" != run && -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
# module to import : distribution pinned as the project's CI installs it (pure Python or cp312 wheels).
NEEDED=(
  pydantic:pydantic==2.14.4 pydantic_core:pydantic_core==2.50.5 annotated_types:annotated-types==0.8.0
  typing_extensions:typing_extensions==4.16.0 typing_inspection:typing-inspection==0.4.5
  yaml:PyYAML==6.0.4 redis:redis==8.2.0 pycocotools:pycocotools==2.0.11
  onnx:onnx==1.23.2 google.protobuf:protobuf==7.36.2 ml_dtypes:ml_dtypes==0.7.0
  pytest:pytest==9.2.0 pytest_timeout:pytest-timeout==2.4.0 pluggy:pluggy==1.7.0 iniconfig:iniconfig==2.3.1
  packaging:packaging==26.4 pygments:pygments==2.21.0
)
MODEL_FILES=(yolov4-tiny.cfg yolov4-tiny.weights coco.names)
ASSETS_SRC=${LOOKOUT_ASSETS:-../shared/assets}

if [[ "$MODE" == prepare ]]; then
  rm -rf "$PREP" && mkdir -p "$WHEELS" "$PREP/models" "$PREP/assets/videos"
  reqs=()
  for item in "${NEEDED[@]}"; do reqs+=("${item#*:}"); done
  echo "==> wheelhouse for CPython 3.12 manylinux x86_64: ${reqs[*]}"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" "${reqs[@]}" || exit 1
  mib=$(du -sm "$WHEELS" | cut -f1)
  if ((mib > MAX_WHEELS_MIB)); then
    echo "the wheelhouse is ${mib} MiB, more than ${MAX_WHEELS_MIB} MiB: $(ls "$WHEELS")" >&2
    exit 1
  fi
  [[ -f data/models/yolov4-tiny.weights ]] \
    || "$PY" -c 'import sys, cli; sys.exit(cli.main())' fetch-weights --dest data/models || exit 1
  for f in "${MODEL_FILES[@]}"; do cp "data/models/$f" "$PREP/models/" || exit 1; done
  cp "$ASSETS_SRC/videos/vtest.avi" "$PREP/assets/videos/" && cp -r "$ASSETS_SRC/coco-mini" "$PREP/assets/" || exit 1
  chmod -R u+w "$PREP"
  echo "==> $PREP: $(du -sh "$PREP" | cut -f1) (wheelhouse ${mib} MiB); carry it to the GPU machine and run" \
       "scripts/gpu-check.sh there"
  exit 0
fi

OUT_DIR=${OUT:-./gpu-check-out}/gpu-check
mkdir -p "$OUT_DIR"
DEADLINE_S=${DEADLINE_S:-470}
START=$SECONDS
STEPS=()
if [[ "$MODE" == dry ]]; then
  BENCH=(--batch 1,2 --iterations 2 --frames 4 --device cpu)
  [[ -d "$ASSETS_SRC" ]] || ASSETS_SRC=$PREP/assets
else
  BENCH=(--batch 1,4,8,16,32 --iterations 50 --frames 64)
  [[ -d "$PREP/assets" ]] && ASSETS_SRC=$PREP/assets
fi
export LOOKOUT_ASSETS=$ASSETS_SRC PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}

# step NAME LIMIT_S CMD...: runs CMD under timeout (at most the time left), output to NAME.log.
step() {
  local name=$1 limit=$2 left rc t0=$SECONDS
  shift 2
  left=$((DEADLINE_S - (SECONDS - START) - 5))
  ((limit > left)) && limit=$left
  if ((limit < 5)); then
    STEPS+=("| $name | not run: the ${DEADLINE_S}s deadline | 0 |")
    return 1
  fi
  GPU_CHECK_MODE=$MODE timeout -k 5 "$limit" bash "$0" --step "$@" >"$OUT_DIR/$name.log" 2>&1
  rc=$?
  local status="ok"
  ((rc == 124 || rc == 137)) && status="timed out after ${limit}s"
  ((rc != 0 && rc != 124 && rc != 137)) && status="failed (exit $rc)"
  STEPS+=("| $name | $status | $((SECONDS - t0)) |")
  echo "==> $name: $status ($((SECONDS - t0)) s)"
  return $rc
}

machine() {
  echo "mode: $MODE; host: $(uname -srm); python: $("$PY" --version 2>&1)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  else
    echo "GPU: none (nvidia-smi not found)"
  fi
  "$PY" - <<'EOF'
import importlib
for name in ("torch", "torchvision", "onnxruntime", "cv2", "numpy", "cupy"):
    try:
        mod = importlib.import_module(name)
        extra = ""
        if name == "torch":
            extra = f" (CUDA {mod.version.cuda}, available: {mod.cuda.is_available()})"
        print(f"{name} {getattr(mod, '__version__', '?')}{extra}")
    except Exception as exc:  # noqa: BLE001 - a report, not a check
        print(f"{name}: cannot import ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
EOF
}

install_missing() {
  local missing=()
  for item in "${NEEDED[@]}"; do
    "$PY" -c "import ${item%%:*}" 2>/dev/null || missing+=("${item#*:}")
  done
  if ((${#missing[@]} == 0)); then echo "nothing missing"; return 0; fi
  echo "installing from $WHEELS: ${missing[*]}"
  local pip=("$PY" -m pip install -q --no-index --no-deps --find-links "$WHEELS")
  # a system Python refuses plain installs (PEP 668), a read-only one wants --user
  "${pip[@]}" "${missing[@]}" || "${pip[@]}" --break-system-packages "${missing[@]}" || "${pip[@]}" --user "${missing[@]}"
  local rc=$? still=()
  for item in "${NEEDED[@]}"; do
    "$PY" -c "import ${item%%:*}" 2>/dev/null || still+=("${item%%:*}")
  done
  ((${#still[@]} == 0)) || { echo "still cannot import: ${still[*]}"; return 1; }
  return $rc
}

models() {
  mkdir -p data/models
  for f in "${MODEL_FILES[@]}"; do
    [[ -f "data/models/$f" ]] || cp "$PREP/models/$f" data/models/ || return 1
  done
  "$PY" -c 'import sys, cli; sys.exit(cli.main())' convert data/models/yolov4-tiny.cfg data/models/yolov4-tiny.weights \
    -o data/models/yolov4-tiny-416.onnx --size 416 --if-stale
}

gpu_tests() {
  # shellcheck disable=SC2046 # one word per test file
  "$PY" -m pytest -q -rs -m gpu -p no:cacheprovider $(grep -l "mark.gpu" tests/test_*.py)
}

bench() {
  "$PY" -c 'import sys, cli; sys.exit(cli.main())' bench --backend torch --bare "${BENCH[@]}"
}

if [[ -n "$STEP" ]]; then
  case "$STEP" in
    machine | install_missing | models | gpu_tests | bench) "$STEP"; exit ;;
    *) echo "unknown step ${STEP@Q}" >&2; exit 2 ;;
  esac
fi

step machine 30 machine
[[ "$MODE" == run ]] && step install 90 install_missing
step models 60 models
step pytest-gpu 200 gpu_tests
step bench 300 bench

{
  echo "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ), $((SECONDS - START)) s)"
  echo
  echo "## Machine"
  echo '```'
  cat "$OUT_DIR/machine.log"
  echo '```'
  echo
  echo "## pytest -m gpu"
  echo '```'
  grep -E "passed|failed|error|SKIPPED|skipped|FAILED|ERROR" "$OUT_DIR/pytest-gpu.log" 2>/dev/null | tail -40 \
    || echo "(no pytest output)"
  echo '```'
  echo
  # The bench prints its own "## Bench" and "## Accuracy" sections; its JSON line goes to bench.json.
  grep -v '^json: ' "$OUT_DIR/bench.log" 2>/dev/null | grep -vE '^(INFO|WARNING|DEBUG) ' \
    || echo "## Bench (no output)"
  grep '^json: ' "$OUT_DIR/bench.log" 2>/dev/null | sed 's/^json: //' >"$OUT_DIR/bench.json"
  echo
  echo "## Steps"
  echo "| step | status | s |"
  echo "| --- | --- | --- |"
  printf '%s\n' "${STEPS[@]}"
} >"$OUT_DIR/summary.md"
cat "$OUT_DIR/summary.md"
echo "==> written: $OUT_DIR/summary.md"
for s in "${STEPS[@]}"; do
  [[ "$s" == *"| ok |"* ]] || exit 1
done
