# Lookout container image.
#   x86 with CUDA (default):   docker build -t lookout .
#   Jetson (L4T, JetPack 6):   docker build -t lookout:jetson \
#                                --build-arg BASE=nvcr.io/nvidia/l4t-jetpack:r36.4.0 --build-arg EXTRAS=tensorrt .
# Run: docker run --gpus all --shm-size=2g -p 8000:8000 -e REDIS_URL=redis://:PASSWORD@redis:6379/0 lookout
#      (Jetson: --runtime nvidia); single box with Redis: `docker compose up` (compose.yaml).
# Runs as the non-root user `lookout` (uid 10001); mount data/ (auth database and keys) writable by it.
ARG BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04
FROM ${BASE}

ARG EXTRAS=""
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 VENV=/opt/lookout/.venv LOOKOUT_DATA=/opt/lookout/data

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip ffmpeg redis-tools \
      ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/lookout
COPY pyproject.toml README.md cli.py serve_config.yaml ./
COPY pipeline ./pipeline
COPY hls ./hls
COPY deployments ./deployments
COPY gateway ./gateway
COPY tools ./tools
COPY scripts ./scripts

# hadolint ignore=DL3008
RUN python3 -m venv "$VENV" \
 && "$VENV/bin/pip" install --no-cache-dir --upgrade pip \
 && "$VENV/bin/pip" install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}" \
 && "$VENV/bin/lookout" fetch-weights --dest "$LOOKOUT_DATA/models" \
 && "$VENV/bin/lookout" convert "$LOOKOUT_DATA/models/yolov4-tiny.cfg" "$LOOKOUT_DATA/models/yolov4-tiny.weights" \
      -o "$LOOKOUT_DATA/models/yolov4-tiny-416.onnx" --size 416 \
 && apt-get update && scripts/fetch_demo.sh && rm -rf /var/lib/apt/lists/* \
 && (getent passwd 10001 >/dev/null || useradd --system --uid 10001 --home-dir /opt/lookout --shell /usr/sbin/nologin lookout) \
 && chown -R 10001:10001 "$LOOKOUT_DATA"

ENV PATH="$VENV/bin:$PATH"
# Many viewers: `docker run -e RAY_SERVE_ENABLE_HA_PROXY=1 ...` puts Ray Serve's HAProxy (bundled with ray[serve])
# in front of the gateway instead of its Python proxy (docs/reliability.md, "Gateway load").
EXPOSE 8000
USER 10001
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 CMD ["curl", "-fsS", "http://127.0.0.1:8000/healthz"]
# Mount your own serve_config.yaml over /opt/lookout/serve_config.yaml to change cameras.
CMD ["serve", "run", "serve_config.yaml"]
