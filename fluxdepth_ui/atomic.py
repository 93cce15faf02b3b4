"""Files appear whole or not at all: write beside the target, then rename over it (docs/sharing.md).

A crash, a full disk or a cancel mid-write leaves the old file (or none), never a truncated one that a resumed
sequence would take for a finished frame.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager


@contextmanager
def atomic_path(path: str):
    """Yield a temporary name in the target's folder; on success it is renamed to `path`, on failure removed."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    root, ext = os.path.splitext(os.path.basename(path))
    # Not mkstemp: the writer creates the file, so it gets the usual permissions (umask), not 0600.
    tmp = os.path.join(folder, f".{root[:40]}.{os.getpid()}-{secrets.token_hex(4)}.part{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
