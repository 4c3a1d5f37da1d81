"""Tiny valid images without Pillow: solid-colour baseline JPEGs and PNGs.

:func:`solid_jpeg` is a minimal baseline JPEG encoder specialised for one flat
colour (every 8×8 block has only a DC coefficient), with hand-made Huffman tables.
:func:`preview_jpeg` makes each preview's bytes unique by inserting a COM segment
after the JFIF APP0 header (so the first four bytes stay ``ffd8ffe0``, as in the
traces). :func:`solid_png` writes an RGB PNG with zlib and struct.
"""

from __future__ import annotations

import functools
import struct
import zlib

__all__ = [
    "color_to_rgb",
    "preview_jpeg",
    "solid_jpeg",
    "solid_png",
]

RGB = tuple[int, int, int]


def color_to_rgb(color: int) -> RGB:
    """Split ComfyUI's ``EmptyImage.color`` (0xRRGGBB) into channels."""
    color = int(color) & 0xFFFFFF
    return (color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF


# Public ----------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def solid_jpeg(rgb: RGB, width: int = 64, height: int = 64) -> bytes:
    """Encode a ``width``×``height`` image of one colour as a baseline JFIF JPEG."""
    if not (0 < width <= 65535 and 0 < height <= 65535):
        raise ValueError("JPEG size out of range")
    ycc = _rgb_to_ycbcr(rgb)
    out = bytearray(b"\xff\xd8")
    out += _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    out += _segment(0xDB, b"\x00" + bytes([1] * 64))  # one all-ones quantisation table
    sof = struct.pack(">BHHB", 8, height, width, 3)
    for comp_id in (1, 2, 3):
        sof += bytes([comp_id, 0x11, 0])  # 1×1 sampling, table 0
    out += _segment(0xC0, sof)
    out += _segment(0xC4, _dht(0x00, _DC_LENGTHS, _DC_SYMBOLS) + _dht(0x10, _AC_LENGTHS, _AC_SYMBOLS))
    sos = bytes([3]) + b"".join(bytes([c, 0x00]) for c in (1, 2, 3)) + b"\x00\x3f\x00"
    out += _segment(0xDA, sos)
    out += _scan(ycc, (width + 7) // 8 * ((height + 7) // 8))
    out += b"\xff\xd9"
    return bytes(out)


def preview_jpeg(rgb: RGB, comment: str, width: int = 64, height: int = 64) -> bytes:
    """Return :func:`solid_jpeg` with a COM segment carrying ``comment`` after APP0."""
    base = solid_jpeg(rgb, width, height)
    app0_end = 4 + struct.unpack(">H", base[4:6])[0]
    com = _segment(0xFE, comment.encode("utf-8")[:65000])
    return base[:app0_end] + com + base[app0_end:]


@functools.lru_cache(maxsize=64)
def solid_png(rgb: RGB, width: int = 64, height: int = 64) -> bytes:
    """Encode a ``width``×``height`` RGB image of one colour as PNG."""
    row = b"\x00" + bytes(rgb) * width  # filter type 0 per scanline
    raw = row * height
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw, 9))
        + _png_chunk(b"IEND", b"")
    )


# Private ---------------------------------------------------------------------

# DC table: categories 0..11, every code 4 bits long (0000..1011; none is all ones).
_DC_LENGTHS = [0, 0, 0, 12] + [0] * 12
_DC_SYMBOLS = list(range(12))
# AC table: only EOB (0x00), one 1-bit code "0".
_AC_LENGTHS = [1] + [0] * 15
_AC_SYMBOLS = [0x00]


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _dht(table_class_id: int, lengths: list[int], symbols: list[int]) -> bytes:
    return bytes([table_class_id]) + bytes(lengths) + bytes(symbols)


def _rgb_to_ycbcr(rgb: RGB) -> tuple[int, int, int]:
    r, g, b = rgb
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return tuple(max(0, min(255, round(v))) for v in (y, cb, cr))  # type: ignore[return-value]


class _BitWriter:
    def __init__(self) -> None:
        self.out = bytearray()
        self._acc = 0
        self._n = 0

    def write(self, value: int, nbits: int) -> None:
        for shift in range(nbits - 1, -1, -1):
            self._acc = (self._acc << 1) | ((value >> shift) & 1)
            self._n += 1
            if self._n == 8:
                self._flush_byte()

    def _flush_byte(self) -> None:
        self.out.append(self._acc)
        if self._acc == 0xFF:
            self.out.append(0x00)  # byte stuffing
        self._acc = 0
        self._n = 0

    def finish(self) -> bytes:
        if self._n:
            pad = 8 - self._n
            self._acc = (self._acc << pad) | ((1 << pad) - 1)
            self._n = 8
            self._flush_byte()
        return bytes(self.out)


def _scan(ycc: tuple[int, int, int], blocks: int) -> bytes:
    bits = _BitWriter()
    previous = [0, 0, 0]
    dc_values = [8 * (v - 128) for v in ycc]  # DC of a flat block, quantiser 1
    for _ in range(blocks):
        for comp in range(3):
            diff = dc_values[comp] - previous[comp]
            previous[comp] = dc_values[comp]
            category = abs(diff).bit_length()
            bits.write(category, 4)  # DC code for `category` is the 4-bit number itself
            if category:
                amplitude = diff if diff > 0 else diff + (1 << category) - 1
                bits.write(amplitude, category)
            bits.write(0, 1)  # EOB
    return bits.finish()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
