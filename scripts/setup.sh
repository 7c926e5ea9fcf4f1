#!/usr/bin/env bash
# Sets up everything Lookout needs on Debian/Ubuntu: system packages, a virtual env, the
# official YOLOv4-tiny weights (+ ONNX), and the demo clip. Safe to run again: it skips what is done.
#   scripts/setup.sh          what `make run` needs
#   scripts/setup.sh --test   also what the tests need (Chromium, GStreamer RTSP server, test extras)
set -euo pipefail
cd "$(dirname "$0")/.."

WANT_TEST=0
[[ "${1:-}" == "--test" ]] && WANT_TEST=1
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
DATA=${LOOKOUT_DATA:-data}

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"

# shellcheck source=scripts/apt.sh
. scripts/apt.sh

PKGS=(redis-server ffmpeg ca-certificates)
if ((WANT_TEST)); then
  PKGS+=(chromium chromium-driver python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
         gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-libav mosquitto)
fi
if ((WANT_TEST)) && ! command -v npm >/dev/null; then
  PKGS+=(nodejs npm)  # the OIDC test runs a real OpenID provider (node-oidc-provider)
fi
apt_install "${PKGS[@]}"

if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating virtual env $VENV"
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    apt_install python3-venv
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
  fi
fi
EXTRAS=""
((WANT_TEST)) && EXTRAS="[test]"
STAMP="$VENV/.installed$EXTRAS"
if [[ ! -f "$STAMP" || pyproject.toml -nt "$STAMP" ]]; then
  say "pip: installing lookout$EXTRAS into $VENV"
  log=$(mktemp)
  if ! { "$VENV/bin/python" -m pip install -q --upgrade pip && "$VENV/bin/python" -m pip install -q -e ".$EXTRAS"; } >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
  fi
  rm -f "$log"
  if ((WANT_TEST)); then
    # The torch backend's tests run on a CPU build of PyTorch. Only a local CPU wheel (pip find-links)
    # is used: PyPI's default torch pulls gigabytes of CUDA libraries. Without one they are skipped.
    "$VENV/bin/python" -m pip install -q "torch==2.13.0+cpu" >/dev/null 2>&1 \
      || echo "note: no CPU PyTorch wheel found; the torch backend tests will be skipped"
    # torchvision (decode_jpeg, batched_nms of the torch JPEG path) the same way: a local CPU wheel only;
    # PyPI's is built for CUDA torch and cannot load next to CPU torch. Without it the path decodes
    # on the host and runs its own NMS, and the tests still run.
    "$VENV/bin/python" -m pip install -q "torchvision==0.28.0+cpu" >/dev/null 2>&1 \
      || echo "note: no CPU torchvision wheel found; the torch JPEG path decodes JPEGs on the host"
  fi
  touch "$STAMP"
fi

say "model: official YOLOv4-tiny weights and ONNX"
"$VENV/bin/lookout" fetch-weights --dest "$DATA/models"
"$VENV/bin/lookout" convert "$DATA/models/yolov4-tiny.cfg" "$DATA/models/yolov4-tiny.weights" \
  -o "$DATA/models/yolov4-tiny-416.onnx" --size 416 --if-stale

LOOKOUT_DATA="$DATA" scripts/fetch_demo.sh
say "setup done"
