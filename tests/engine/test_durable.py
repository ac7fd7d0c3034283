"""moa.durable: the one atomic write and directory fsync that the checkpoint and the embedded models share."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from moa.durable import fsync_dir, fsync_tree, write_text_atomic
from proposers.embedded import file_sha256


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_write_text_atomic_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "new" / "folder" / "out.txt"  # folders are created
    write_text_atomic(path, "first\n")
    write_text_atomic(path, "second é\n")
    assert path.read_text(encoding="utf-8") == "second é\n"
    assert os.listdir(path.parent) == ["out.txt"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()  # a plain file's mode, as open() makes it


def test_the_hash_memo_is_written_by_the_shared_atomic_write(tmp_path: Path) -> None:
    data = tmp_path / "weights.bin"
    data.write_bytes(b"w" * 1000)
    root = tmp_path / "cache"
    file_sha256(data, root)
    (memo,) = (root / "hashes").iterdir()
    assert stat.S_IMODE(memo.stat().st_mode) == 0o666 & ~_umask()  # its own copy made it 0600 (mkstemp)


def test_fsync_tree_and_dir_flush_what_exists_and_skip_what_cannot_be_opened(tmp_path: Path) -> None:
    tree = tmp_path / "model"
    (tree / "sub").mkdir(parents=True)
    (tree / "config.json").write_text("{}")
    (tree / "sub" / "weights.bin").write_bytes(b"\0" * 10)
    fsync_tree(tree)
    fsync_dir(tmp_path / "missing")  # a no-op, not an error
