"""Generators for hostile inputs: every file here is made by the tests, none is shipped."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import write_exr


def png16(path, h=96, w=128) -> str:
    depth = np.tile(np.linspace(1000, 9000, w, dtype=np.float64), (h, 1)).astype(np.uint16)
    depth[:10] = 0
    Image.fromarray(depth).save(path)
    return str(path)


def exr_with_data_window(path, width: int, height: int) -> str:
    """A small valid EXR whose header then claims a width x height data window (a decompression bomb's header)."""
    write_exr(path, {"Z": np.full((128, 128), 5.0, np.float32)})
    data = bytearray(Path(path).read_bytes())
    key = b"dataWindow\x00box2i\x00"
    at = data.index(key) + len(key) + 4  # past the attribute's size field
    data[at:at + 16] = struct.pack("<iiii", 0, 0, width - 1, height - 1)
    Path(path).write_bytes(bytes(data))
    return str(path)


def png_claiming(path, width: int, height: int) -> str:
    """A tiny PNG whose IHDR claims width x height (CRC fixed, so only the size is a lie)."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    Path(path).write_bytes(bytes(data))
    return str(path)


def zip_of(path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> str:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return str(path)


def frame_bytes(tmp, number: int) -> bytes:
    path = Path(tmp) / f"_frame{number}.png"
    png16(path)
    return path.read_bytes()
