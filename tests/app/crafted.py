"""Tiny files in formats the service must refuse or that are hostile, made byte by byte."""
from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def fits() -> bytes:
    """A minimal valid FITS file: one 2880-byte header of 80-character cards, 4x4 8-bit data."""
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    2",
             "NAXIS1  =                    4", "NAXIS2  =                    4", "END"]
    header = "".join(c.ljust(80) for c in cards).ljust(2880).encode("ascii")
    return header + bytes(range(16)).ljust(2880, b"\0")


def eps() -> bytes:
    """An EPS header Pillow's EPS plugin accepts (decoding it would run Ghostscript)."""
    return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 4 4\n%%EndComments\n"
            b"0 0 moveto 4 4 lineto stroke\nshowpage\n%%EOF\n")


def pdf() -> bytes:
    """A one-page PDF written by Pillow."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, "PDF")
    return out.getvalue()


def tiff() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "green").save(out, "TIFF")
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A 100-byte PNG whose header claims width x height pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _chunk(b"IEND", b"")
