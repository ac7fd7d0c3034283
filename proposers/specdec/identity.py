"""Which models a trained file belongs to: model hashes and the metadata moa writes into safetensors."""

from __future__ import annotations

import hashlib
from pathlib import Path

from safetensors import safe_open

from moa.errors import ConfigError
from proposers.embedded import file_sha256

_WEIGHT_GLOBS = ("config.json", "*.safetensors", "*.bin")


def model_hash(path: str | Path) -> str:
    """SHA-256 naming a model: of a file, its bytes; of a Hugging Face folder, its config and weight files."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    files = sorted({f for pattern in _WEIGHT_GLOBS for f in path.glob(pattern) if f.is_file()})
    if not files:
        raise ConfigError(f"{path} holds no config.json or weight files")
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def read_metadata(path: str | Path, kind: str, field: str | None = None) -> dict[str, str]:
    """The metadata of a safetensors file moa saved, checking it is of ``kind``."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (OSError, ValueError, RuntimeError) as e:
        raise ConfigError(f"cannot read {path}: {e}", field) from None
    if meta.get("kind") != kind:
        raise ConfigError(f"{path} is not a {kind} file (kind: {meta.get('kind')!r})", field)
    return meta


__all__ = ["model_hash", "read_metadata"]
