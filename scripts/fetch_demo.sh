#!/usr/bin/env bash
# Puts the demo clip (vtest.avi, from Debian's opencv-doc package) at $LOOKOUT_DATA/demo/vtest.avi,
# and its H.264 copy (what an IP camera sends; the shipped config streams it by copy) at
# $LOOKOUT_DATA/demo/vtest-h264.mp4.
set -euo pipefail
DATA=${LOOKOUT_DATA:-data}
VTEST_SHA=45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf
OUT="$DATA/demo/vtest.avi"
H264="$DATA/demo/vtest-h264.mp4"

make_h264() {
  # Like a camera: H.264 main profile, a keyframe every 2 s (20 frames at 10 fps), no B-frames.
  [[ -s "$H264" && "$H264" -nt "$OUT" ]] && return 0
  echo "==> demo clip: its H.264 copy (vtest-h264.mp4)"
  ffmpeg -hide_banner -loglevel error -nostdin -y -i "$OUT" -an -c:v libx264 -preset veryfast -crf 23 \
    -profile:v main -pix_fmt yuv420p -g 20 -keyint_min 20 -sc_threshold 0 -bf 0 -movflags +faststart \
    -f mp4 "$H264.part"
  mv "$H264.part" "$H264"
}

if [[ -f "$OUT" ]] && echo "$VTEST_SHA  $OUT" | sha256sum -c --status; then
  make_h264
  exit 0
fi
echo "==> demo clip: vtest.avi from Debian's opencv-doc package"
SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 777 "$tmp"
(cd "$tmp" && { apt-get download -qq opencv-doc 2>/dev/null || { $SUDO apt-get update -qq && apt-get download -qq opencv-doc; }; })
mkdir -p "$DATA/demo"
dpkg-deb --fsys-tarfile "$tmp"/opencv-doc_*.deb | tar -xO ./usr/share/doc/opencv-doc/examples/data/vtest.avi > "$OUT.part"
echo "$VTEST_SHA  $OUT.part" | sha256sum -c --status || { echo "vtest.avi: checksum mismatch" >&2; exit 1; }
mv "$OUT.part" "$OUT"
make_h264
