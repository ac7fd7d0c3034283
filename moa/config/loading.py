"""Loading a config: from a mapping, a YAML/JSON file or a shipped recipe's name, with the environment read and
``by_device`` choices made before validation, and every problem reported naming its field.

String values may use ``${VAR}`` or ``${VAR:-default}`` to read the environment (for base URLs and model
names). API keys are never written in a config: ``api_key_env`` names the variable that holds one.

Any value may be ``{by_device: {cpu: A, cuda: B}}``: at load time it becomes the choice for this machine's device
(``local_device()``: ``$MOA_DEVICE``, else ``cuda`` where torch sees a GPU, else ``cpu``). A backend whose choice
is ``null`` is left out::

    backends:
      drafting: {by_device: {cpu: {type: torch, model: "embedded:smollm2-135m-instruct"}, cuda: null}}
    aggregator: {backend: {by_device: {cpu: drafting, cuda: local}}}
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from moa import validation
from moa.config.aggregator import AGGREGATOR_TYPES
from moa.config.backends import BACKEND_TYPES
from moa.config.ensemble import EnsembleConfig
from moa.defense_config import DEFENSE_TYPES, EMBEDDING_TYPES
from moa.errors import ConfigError
from moa.response_format import RESPONSE_FORMAT_TYPES

_CONFIG_DIR = Path(__file__).parent.parent / "configs"

# ---- loading -----------------------------------------------------------------------------------------------

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(value: Any, path: str = "") -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            var, default = m.group(1), m.group(2)
            if var in os.environ:
                return os.environ[var]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {var} is not set", path or None)

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


#: the devices a ``by_device`` choice names; ``$MOA_DEVICE`` forces one
Device = Literal["cpu", "cuda"]
DEVICES: tuple[Device, ...] = ("cpu", "cuda")
DEVICE_ENV = "MOA_DEVICE"
_BY_DEVICE = "by_device"


def local_device() -> Device:
    """The device local backends run on: ``$MOA_DEVICE`` if set, else ``cuda`` where torch sees a GPU, else
    ``cpu`` (torch is imported only here, and only when a config asks)."""
    forced = os.environ.get(DEVICE_ENV, "")
    if forced:
        for device in DEVICES:
            if forced == device:
                return device
        raise ConfigError(f"${DEVICE_ENV} must be one of {list(DEVICES)}, got {forced!r}")
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


class _Dropped:
    """A ``by_device`` choice of ``null``: the key that holds it is left out."""


_DROPPED = _Dropped()


def _choose_device(value: Any, device: Callable[[], Device], path: str = "") -> Any:
    """``value`` with every ``{by_device: {...}}`` replaced by the choice for ``device()``."""
    if isinstance(value, dict) and _BY_DEVICE in value:
        where = f"{path}.{_BY_DEVICE}" if path else _BY_DEVICE
        choices = value[_BY_DEVICE]
        if len(value) != 1:
            others = ", ".join(sorted(str(k) for k in value if k != _BY_DEVICE))
            raise ConfigError(f"by_device stands alone; move {others} into each choice", path or None)
        if not isinstance(choices, dict) or not choices:
            raise ConfigError(f"must map devices ({', '.join(DEVICES)}) to values", where)
        unknown = sorted(str(k) for k in choices if k not in DEVICES)
        if unknown:
            raise ConfigError(
                f"unknown device {unknown[0]!r}, expected one of {list(DEVICES)}", f"{where}.{unknown[0]}"
            )
        here = device()
        if here not in choices:
            raise ConfigError(f"no choice for this machine's device {here!r} (${DEVICE_ENV} picks one)", where)
        chosen = choices[here]
        return _DROPPED if chosen is None else _choose_device(chosen, device, path)
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            chosen = _choose_device(v, device, f"{path}.{k}" if path else str(k))
            if chosen is not _DROPPED:
                out[k] = chosen
        return out
    if isinstance(value, list):
        items = [_choose_device(v, device, f"{path}[{i}]") for i, v in enumerate(value)]
        if any(item is _DROPPED for item in items):
            raise ConfigError("a list item cannot be a by_device choice of null", path or None)
        return items
    return value


def _once(make: Callable[[], Device]) -> Callable[[], Device]:
    """``make``, called at most once."""
    made: list[Device] = []

    def get() -> Device:
        if not made:
            made.append(make())
        return made[0]

    return get


#: where a config's discriminated unions sit, and their tags
UNION_TAGS: validation.UnionTags = (
    (re.compile(r"backends\.[^.]+"), BACKEND_TYPES),
    (re.compile(r"aggregator"), AGGREGATOR_TYPES),
    (re.compile(r"defense"), DEFENSE_TYPES),
    (re.compile(r"defense\.embeddings"), EMBEDDING_TYPES),
    (re.compile(r"red_team\.placement"), ("positions", "random")),
    (re.compile(r"(.*\.)?response_format"), RESPONSE_FORMAT_TYPES),  # configs' agents, SDK, server
)


def config_error(error: ValidationError, at: str | None = None, *, every: bool = False) -> ConfigError:
    """``moa.validation.config_error`` with the config's unions known: their tags are left out of paths."""
    return validation.config_error(error, at, every=every, tags=UNION_TAGS)


def parse_config(data: dict[str, Any]) -> EnsembleConfig:
    """Validate a config mapping; every problem is reported as ``path: message`` in one ``ConfigError``."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping, got {type(data).__name__}")
    try:
        return EnsembleConfig.model_validate(_choose_device(_expand_env(data), _once(local_device)))
    except ValidationError as e:
        raise config_error(e, every=True) from None


def builtin_configs() -> dict[str, Path]:
    """The recipes shipped with moa, by name (file stem)."""
    return {p.stem: p for p in sorted(_CONFIG_DIR.glob("*.yaml"))}


def load_config(source: str | os.PathLike[str] | dict[str, Any] | EnsembleConfig) -> EnsembleConfig:
    """A config from a mapping, a YAML/JSON file, or the name of a shipped recipe (``self-moa``)."""
    if isinstance(source, EnsembleConfig):
        return source
    if isinstance(source, dict):
        return parse_config(source)
    path = Path(source)
    if not path.exists():
        builtin = builtin_configs().get(str(source))
        if builtin is None:
            names = ", ".join(builtin_configs())
            raise ConfigError(f"no config file {str(source)!r} and no shipped recipe of that name (shipped: {names})")
        path = builtin
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
    return parse_config(data)
