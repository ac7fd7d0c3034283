"""Starting vLLM's engine processes without running the caller's script again in them.

vLLM starts its engine core with multiprocessing's ``spawn`` method (always on CPU; on CUDA once CUDA is
initialised). A spawned child imports the parent's ``__main__`` again before it runs anything, so a plain script
without an ``if __name__ == "__main__":`` guard would run its ensemble a second time inside the engine process,
which fails while the child is still starting ("An attempt has been made to start a new process before the
current process has finished its bootstrapping phase").

The engine process needs nothing from ``__main__`` (its target and arguments live in vLLM's modules), so while
an engine starts, ``sys.modules["__main__"]`` is a stand-in that multiprocessing sees as "no main module to
import" (no ``__file__``, no ``__spec__``) and that holds (and hands through) every other name of the real one, so code
running meanwhile (pickling a class of the script, ``typing.get_type_hints``) still finds the script's names.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

#: what multiprocessing reads to decide which main module a spawned child imports
_HIDDEN = frozenset({"__file__", "__spec__", "__loader__", "__cached__"})


class _MainStandIn(ModuleType):
    """``__main__`` without the attributes that make a spawned child import it; the rest is the real one's."""

    def __init__(self, real: ModuleType) -> None:
        super().__init__("__main__", real.__doc__)
        self.__dict__.update({k: v for k, v in vars(real).items() if k not in _HIDDEN and k != "__name__"})
        object.__setattr__(self, "_real", real)

    def __getattr__(self, name: str) -> Any:
        if name in _HIDDEN:
            raise AttributeError(name)
        return getattr(object.__getattribute__(self, "_real"), name)


_lock = threading.Lock()
_depth = 0  # engine starts in progress (several backends may start at once, each in its own thread)
_real_main: ModuleType | None = None


@contextmanager
def main_module_not_reimported() -> Iterator[None]:
    """Processes spawned inside this block do not import the caller's ``__main__``."""
    global _depth, _real_main
    with _lock:
        if _depth == 0:
            real = sys.modules.get("__main__")
            if real is not None and not isinstance(real, _MainStandIn):
                _real_main = real
                sys.modules["__main__"] = _MainStandIn(real)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _real_main is not None:
                sys.modules["__main__"] = _real_main
                _real_main = None


def importing_main_of_a_spawned_process() -> bool:
    """True while this process is a spawned child still importing its parent's ``__main__``: a process started
    now would fail (multiprocessing refuses), because the parent's script has no ``__main__`` guard."""
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


MAIN_GUARD_HINT = (
    "this code runs while a process started with multiprocessing's spawn method imports the parent's script "
    "again, so it cannot start the engine's processes: the script starts other processes (its own, or a "
    'library\'s) and runs its ensemble at import time. Put that code under `if __name__ == "__main__":`'
)

__all__ = ["MAIN_GUARD_HINT", "importing_main_of_a_spawned_process", "main_module_not_reimported"]
