"""A machine-readable clock in the picture: the capture time (ms) as black/white blocks.

Layout (blocks of width/64 by height/36 pixels, from the top-left corner): a white frame of
one block around 2 rows of 24 data blocks (MSB first): 44 bits of Unix milliseconds, then 4
bits of checksum (the number of set bits mod 16). Sizes relative to each axis survive scaling,
also to another aspect ratio, and blocks this large survive H.264 at ordinary quality. The browser reads it back the same way
(`gateway/web/static/timecode.js`).
"""

from __future__ import annotations

import numpy as np

COLS, ROWS, VALUE_BITS = 24, 2, 44
GRID_X, GRID_Y = 64, 36  # a block is width / GRID_X by height / GRID_Y


def _bits(ms: int) -> list[int]:
    value = [(ms >> (VALUE_BITS - 1 - i)) & 1 for i in range(VALUE_BITS)]
    check = sum(value) % 16
    return value + [(check >> (3 - i)) & 1 for i in range(4)]


def block_px(width_px: int, height_px: int) -> tuple[float, float]:
    return width_px / GRID_X, height_px / GRID_Y


def burn(image: np.ndarray, captured_at: float) -> np.ndarray:
    """Draw `captured_at` (Unix seconds) into `image` (HxWx3 uint8, in place); returns it."""
    h, w = image.shape[:2]
    bx, by = block_px(w, h)
    if bx < 2 or by < 2:
        raise ValueError(f"image {w}x{h} is too small for a timecode")
    ms = int(round(captured_at * 1000))
    if not 0 <= ms < 1 << VALUE_BITS:
        raise ValueError(f"captured_at out of range: {captured_at!r}")
    image[: int(round((ROWS + 2) * by)), : int(round((COLS + 2) * bx))] = 255
    for i, bit in enumerate(_bits(ms)):
        r, c = divmod(i, COLS)
        y0, x0 = int(round((r + 1) * by)), int(round((c + 1) * bx))
        y1, x1 = int(round((r + 2) * by)), int(round((c + 2) * bx))
        image[y0:y1, x0:x1] = 0 if bit else 255
    return image


def read(image: np.ndarray) -> float | None:
    """The capture time burned into `image` (any scale), or None when there is none or it is damaged."""
    h, w = image.shape[:2]
    bx, by = block_px(w, h)
    gray = image.mean(axis=2) if image.ndim == 3 else image
    bits = []
    for i in range(COLS * ROWS):
        r, c = divmod(i, COLS)
        y, x = int((r + 1.5) * by), int((c + 1.5) * bx)
        bits.append(1 if gray[y, x] < 128 else 0)
    value = 0
    for bit in bits[:VALUE_BITS]:
        value = value << 1 | bit
    check = int("".join(map(str, bits[VALUE_BITS:])), 2)
    if check != sum(bits[:VALUE_BITS]) % 16 or value == 0:
        return None
    return value / 1000
