"""Uploaded images (POST /api/detect): their size read from the header before any decoding, and a
bounded decoder that works off the event loop.

A small file can declare a huge image (a 74-byte PNG of 100000x100000, a 389 KB PNG of zeros of
20000x20000): decoding it first would take seconds of CPU and gigabytes, so the header decides.
"""

from __future__ import annotations

import asyncio
import struct

import cv2
import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (C0-CF but DHT C4, JPG C8 and DAC CC): they carry the image size
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}  # TEM, RSTn: markers without a length field


class BadImage(ValueError):
    """The body is not an image whose size its header states."""


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG (IHDR) or JPEG (SOFn) from its header; BadImage when there is none."""
    if data.startswith(PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise BadImage("the PNG has no IHDR header")
        return struct.unpack(">II", data[16:24])
    if data.startswith(b"\xff\xd8"):
        i = 2
        while i + 4 <= len(data):
            if data[i] != 0xFF:
                raise BadImage(f"the JPEG has no marker at byte {i}")
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in _NO_LENGTH:
                i += 2
                continue
            if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before them
                break
            (length,) = struct.unpack(">H", data[i + 2 : i + 4])
            if marker in _SOF:
                if i + 9 > len(data) or length < 7:
                    break
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                if height == 0:  # the height would come after the first scan (DNL): not for uploads
                    raise BadImage("the JPEG does not state its height in its frame header")
                return width, height
            i += 2 + length
        raise BadImage("the JPEG has no frame header (SOFn) with its size")
    raise BadImage("neither a PNG nor a JPEG")


class Decoder:
    """Decodes images in worker threads, at most `max_concurrent` at once per process."""

    def __init__(self, max_concurrent: int, wait_s: float = 5.0):
        self.max_concurrent, self.wait_s = max_concurrent, wait_s
        self._slots: dict[int, asyncio.Semaphore] = {}  # per event loop

    async def decode(self, data: bytes) -> np.ndarray | None:
        """The BGR pixels, None when OpenCV cannot decode them; TimeoutError when every slot stayed busy."""
        loop = id(asyncio.get_running_loop())
        slots = self._slots.setdefault(loop, asyncio.Semaphore(self.max_concurrent))
        await asyncio.wait_for(slots.acquire(), self.wait_s)
        try:
            return await asyncio.to_thread(_decode, data)
        finally:
            slots.release()


def _decode(data: bytes) -> np.ndarray | None:
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # e.g. a header OpenCV refuses that image_size let through
        return None
