"""Durable files: an append-only JSONL checkpoint, and JSON written whole or not at all.

A checkpoint is a header line that says what run it belongs to, then one line per done item. Every record is written with one unbuffered write, then fsynced, before the item counts as done; so a process
killed at any moment (SIGKILL included) leaves at worst one torn last line, which the next open cuts off. A
checkpoint whose header names another run (a different config or instruction set) is refused, never mixed in.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from moa.durable import fsync_dir, write_text_atomic
from moa.errors import ConfigError

FORMAT = "moa-checkpoint/1"
_HEADER_START = json.dumps({"format": FORMAT}).encode()[:-1]  # every header line starts so


class Checkpoint:
    """Done items by index, and the file to append more to. ``records`` holds the first record of each index."""

    def __init__(self, path: Path, header: dict[str, Any], records: dict[int, dict[str, Any]]) -> None:
        self.path = path
        self.header = header
        self.records = records
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path, kind: str, identity: dict[str, str], about: dict[str, Any]) -> Checkpoint:
        """Resume ``path`` if it belongs to this run (same ``kind`` and ``identity``), else start it afresh.

        ``identity`` holds the fingerprints that must match to resume; ``about`` is shown when they don't.
        """
        path = Path(path)
        raw = _read(path)
        lines, end = _complete_lines(raw)
        if not lines or (len(lines) == 1 and not _parses(lines[0])):
            if not _torn_header(raw):
                raise _not_a_checkpoint(path)
            header = {"format": FORMAT, "kind": kind, "identity": identity, "about": about}
            _write_fresh(path, header)
            return cls(path, header, {})
        header = _parse_header(path, lines[0], kind)
        _check_identity(path, header, identity, about)
        records = _parse_records(path, lines[1:])
        if end < len(raw):  # only a file known to be this run's checkpoint is changed
            os.truncate(path, end)
        return cls(path, header, records)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record (it must carry ``index``) and make it durable. Safe from several threads."""
        data = (json_text(record) + "\n").encode()
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
            self.records.setdefault(int(record["index"]), record)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _complete_lines(raw: bytes) -> tuple[list[bytes], int]:
    """The newline-terminated lines of a file's bytes, less a torn last line (killed mid-write), and where they
    end: the length to cut the file to once it is known to be a checkpoint."""
    end = raw.rfind(b"\n") + 1
    lines = raw[:end].splitlines()
    if len(lines) > 1 and not _parses(lines[-1]):  # written in full but not durable before a crash: drop it too
        end -= len(lines.pop()) + 1
    return lines, end


def _torn_header(raw: bytes) -> bool:
    """Whether ``raw`` (a file without a readable header) is empty or the start of a header that a crash cut
    short: nothing that could be lost."""
    body = raw.removesuffix(b"\n")
    return b"\n" not in body and body[: len(_HEADER_START)] == _HEADER_START[: len(body)]


def _not_a_checkpoint(path: Path) -> ConfigError:
    return ConfigError(f"{path} exists but is not a moa checkpoint; move it away or choose another output path")


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _write_fresh(path: Path, header: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write((json_text(header) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(path.parent)


def _parse_header(path: Path, line: bytes, kind: str) -> dict[str, Any]:
    try:
        header = json.loads(line)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _not_a_checkpoint(path)
    if header.get("kind") != kind:
        raise ConfigError(f"{path} is a checkpoint of `{header.get('kind')}`, not of `{kind}`; choose another path")
    return header


def _check_identity(path: Path, header: dict[str, Any], identity: dict[str, str], about: dict[str, Any]) -> None:
    theirs = header.get("identity") or {}
    differ = [k for k in identity if theirs.get(k) != identity[k]]
    if not differ:
        return
    was = header.get("about") or {}
    detail = "; ".join(
        f"{k}: checkpoint has {was.get(k, theirs.get(k))!r}, this run {about.get(k, identity[k])!r}" for k in differ
    )
    raise ConfigError(
        f"{path} was written by a run with a different {' and '.join(differ)} ({detail}). Resuming would mix two "
        "runs: rerun with the original arguments, or delete the checkpoint (or pick another output) to start over"
    )


def _parse_records(path: Path, lines: list[bytes]) -> dict[int, dict[str, Any]]:
    records: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(lines, start=2):
        try:
            record = json.loads(line)
            index = int(record["index"])
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f"{path}:{number}: unreadable checkpoint record; the file was edited or damaged"
            ) from None
        records.setdefault(index, record)
    return records


def json_text(data: Any, indent: int | None = None) -> str:
    """``data`` as JSON that encodes to UTF-8 for any ``str`` in it: a lone surrogate (what JSON ``"\\ud83d"``
    decodes to) becomes U+FFFD, as a UTF-8 decoder does with a broken sequence; a split pair is joined."""
    text = json.dumps(data, ensure_ascii=False, indent=indent)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON (``json_text``) to ``path``, whole or not at all, and make it durable."""
    write_text_atomic(Path(path), json_text(data, indent=2) + "\n")


__all__ = ["Checkpoint", "json_text", "write_json_atomic"]
