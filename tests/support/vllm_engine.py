"""One real vLLM engine on the embedded SmolLM2, shared by the tests of a module.

A test module asks for it with ``pytest_plugins = ["tests.support.vllm_engine"]``. The fixture is module-scoped
on purpose: the engine of one module is shut down before the next module (or an SDK test making its own
engine) starts one, so a test run never holds two engines at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import psutil
import pytest

from moa.config import VLLMBackendConfig

if TYPE_CHECKING:  # importing vLLM takes seconds: only the tests that use it pay for it
    from proposers.vllm_engine import VLLMProposer

#: a context longer than vLLM's default step budget (2048 tokens), so that a prompt can need a chunked prefill
LOCAL = VLLMBackendConfig(type="vllm", model="embedded:smollm2-135m-instruct", max_model_len=3072)


@pytest.fixture(scope="module")
async def local_proposer() -> AsyncIterator[VLLMProposer]:
    from proposers.vllm_engine import VLLMProposer

    proposer = VLLMProposer("local", LOCAL)
    await proposer.start()
    yield proposer
    await proposer.aclose()


def engine_processes() -> list[psutil.Process]:
    """vLLM's engine-core and worker processes under this one (they name themselves ``VLLM::...``), zombies
    included: a child that exited but was never reaped is an unclean shutdown too."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.name().startswith("VLLM::"):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found
