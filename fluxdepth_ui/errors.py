"""The one family of errors meant for the artist, and how a file is named in a message.

Every error a user can cause or fix derives from `FluxDepthError`; its message is one line that says what is wrong
and what to do. Front ends (CLI, app, API) catch this base only; anything else is a bug, logged with an id
(docs/sharing.md).
"""

from __future__ import annotations

import os
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class FluxDepthError(Exception):
    """An error whose message is one line for the artist: the problem and the fix."""

    def __str__(self) -> str:
        return one_line(super().__str__())


def one_line(text: str) -> str:
    """Collapse whatever a library or a file name put in a message to one printable line."""
    return " ".join(_CONTROL.sub(" ", str(text)).split())


def display_name(path, limit: int = 80) -> str:
    """A file's name as a message shows it: no folders (never a server path), no control characters, bounded."""
    name = os.path.basename(os.fspath(path).rstrip("/\\")) or "file"
    name = _CONTROL.sub("?", name)
    return name if len(name) <= limit else name[: limit - 3] + "..."
