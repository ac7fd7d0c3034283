"""Files written whole or not at all, and directory entries made durable.

A file is written to a temporary name beside its final one, flushed to disk, then renamed over it: a reader
sees the old file or the new one, never half of one, and a crash leaves at worst a stray temporary file. The
rename itself lasts only once its directory is fsynced too. Imports nothing of moa (it sits at the bottom).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a new or renamed entry of ``directory`` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder``, so that renaming ``folder`` never lands before its data."""
    for dirpath, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all, creating its folder if needed, and make it durable.

    The temporary file (``.<name>.<pid>.<random>.tmp`` beside ``path``) is removed whatever happens.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


__all__ = ["fsync_dir", "fsync_tree", "write_text_atomic"]
