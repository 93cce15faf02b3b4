"""Frames from an uploaded zip: only depth files come out, and only as much as the limits allow.

Members are recognised by their first bytes (the same sniffing as every depth reader), never by their names, and
land flat in one folder under a sanitized name: nothing else in the zip (HTML, SVG, scripts, folders, links) is
written anywhere, so nothing a visitor sent can ever be served back (docs/sharing.md).
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass

from . import limits
from .depth import DepthInputError
from .depth.readers import sniff_bytes
from .errors import display_name

_CHUNK = 1 << 20
_UNSAFE = re.compile(r"[^A-Za-z0-9._$#%-]")


@dataclass(frozen=True)
class Extracted:
    names: tuple[str, ...]  # depth files written, by their sanitized names
    skipped: tuple[str, ...]  # members that are not depth files (shown to the artist, never written)


def is_zip(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) in (b"PK\x03\x04", b"PK\x05\x06")


def safe_member_name(member: str) -> str:
    """The member's own name, without folders, control characters or anything a shell or URL treats specially."""
    base = member.replace("\\", "/").rsplit("/", 1)[-1]
    return _UNSAFE.sub("_", base)[:120]


def extract_depth_members(zip_path: str, dest: str, bound: limits.Limits | None = None) -> Extracted:
    """Write the zip's depth files into `dest` (flat). Raises DepthInputError when the zip breaks a limit."""
    bound = bound or limits.current()
    zip_name = display_name(zip_path)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise DepthInputError(f"{zip_name} is not a readable zip; zip the frames again") from None
    written: list[str] = []
    skipped: list[str] = []
    budget = bound.zip_mb * 1024 * 1024
    with archive:
        members = archive.infolist()
        if len(members) > bound.zip_members:
            raise DepthInputError(f"{zip_name} holds {len(members)} entries, above the limit of {bound.zip_members}; "
                                  "zip only the depth frames")
        declared = sum(m.file_size for m in members)
        if declared > budget:
            raise DepthInputError(f"{zip_name} expands to {declared / 2**20:.0f} MB, above the {bound.zip_mb} MB "
                                  "limit; send fewer frames at a time")
        for member in members:
            name = safe_member_name(member.filename)
            if member.is_dir() or not name or name.startswith("."):
                continue
            try:
                with archive.open(member) as src:
                    head = src.read(16)
                    if sniff_bytes(head) is None:
                        skipped.append(name)
                        continue
                    if name in written:
                        raise DepthInputError(f"{zip_name} holds two frames named {name} (in different folders); "
                                              "zip one sequence at a time")
                    budget = _copy(src, head, os.path.join(dest, name), budget, zip_name, bound)
            except DepthInputError:
                raise
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError, NotImplementedError):
                raise DepthInputError(f"{zip_name}: member {name} cannot be unpacked (damaged, encrypted or an "
                                      "unsupported compression); zip the frames again") from None
            written.append(name)
    return Extracted(tuple(written), tuple(skipped))


def _copy(src, head: bytes, target: str, budget: int, zip_name: str, bound: limits.Limits) -> int:
    """Copy while counting: a member's declared size can lie, its bytes cannot."""
    budget -= len(head)
    with open(target, "wb") as dst:
        dst.write(head)
        while chunk := src.read(_CHUNK):
            budget -= len(chunk)
            if budget < 0:
                dst.close()
                os.unlink(target)
                raise DepthInputError(f"{zip_name} expands beyond the {bound.zip_mb} MB limit; send fewer frames at "
                                      "a time")
            dst.write(chunk)
    return budget
