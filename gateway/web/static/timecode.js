// Reads the capture-time blocks that hls/timecode.py burns into frames (same layout, any scale).
"use strict";
const Timecode = (() => {
  const COLS = 24, ROWS = 2, VALUE_BITS = 44, GRID_X = 64, GRID_Y = 36;
  let canvas = null;
  function read(video) {
    const w = video.videoWidth, h = video.videoHeight;
    if (!w || !h) return null;
    const bx = w / GRID_X, by = h / GRID_Y, cw = Math.ceil((COLS + 2) * bx), ch = Math.ceil((ROWS + 2) * by);
    canvas = canvas || document.createElement("canvas");
    if (canvas.width !== cw || canvas.height !== ch) { canvas.width = cw; canvas.height = ch; }
    const g = canvas.getContext("2d", { willReadFrequently: true });
    g.drawImage(video, 0, 0, cw, ch, 0, 0, cw, ch);
    const px = g.getImageData(0, 0, cw, ch).data;
    const bits = [];
    for (let i = 0; i < COLS * ROWS; i++) {
      const r = Math.floor(i / COLS), c = i % COLS;
      const y = Math.floor((r + 1.5) * by), x = Math.floor((c + 1.5) * bx), k = (y * cw + x) * 4;
      bits.push((px[k] + px[k + 1] + px[k + 2]) / 3 < 128 ? 1 : 0);
    }
    let value = 0, ones = 0, check = 0;
    for (let i = 0; i < VALUE_BITS; i++) { value = value * 2 + bits[i]; ones += bits[i]; }
    for (let i = VALUE_BITS; i < bits.length; i++) check = check * 2 + bits[i];
    return value > 0 && check === ones % 16 ? value : null;  // Unix ms
  }
  return { read };
})();
