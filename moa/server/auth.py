"""API keys for ``moa serve``: read from an environment variable or a file, compared in constant time.

Keys never leave this module: not in errors, logs or reprs. An environment variable may hold several keys
separated by commas; a file holds one key a line (blank lines and ``#`` comments skipped).
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from moa.errors import ConfigError


class APIKeys:
    """The accepted keys; ``check`` compares a request's ``Authorization`` header against all of them."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys]

    def __repr__(self) -> str:
        return f"APIKeys({len(self._keys)} key(s))"

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        given = token.strip().encode("utf-8", "replace")
        ok = False
        for key in self._keys:  # every key compared, so the time does not tell which one matched
            ok |= hmac.compare_digest(given, key)
        return ok and scheme.lower() == "bearer"


def load_keys(env_var: str | None = None, key_file: str | os.PathLike[str] | None = None) -> APIKeys | None:
    """The keys from ``env_var`` or ``key_file``; ``None`` when neither is given (no auth)."""
    if env_var is not None:
        raw = os.environ.get(env_var, "")
        keys = [k.strip() for k in raw.split(",") if k.strip()]
        if not keys:
            raise ConfigError(f"environment variable {env_var} is unset or empty", "--api-key-env")
        return APIKeys(keys)
    if key_file is not None:
        try:
            text = Path(key_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read {key_file}: {type(e).__name__}", "--api-key-file") from None
        keys = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise ConfigError(f"{key_file} holds no key", "--api-key-file")
        return APIKeys(keys)
    return None
