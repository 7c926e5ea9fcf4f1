#!/usr/bin/env bash
# Puts the demo clip (vtest.avi, from Debian's opencv-doc package) at $LOOKOUT_DATA/demo/vtest.avi.
set -euo pipefail
DATA=${LOOKOUT_DATA:-data}
VTEST_SHA=45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf
OUT="$DATA/demo/vtest.avi"
if [[ -f "$OUT" ]] && echo "$VTEST_SHA  $OUT" | sha256sum -c --status; then
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
