"""The ensemble config: its schema (pydantic v2), one module a domain, and its loading from YAML/JSON with
errors that name the field.

A config names its backends once and refers to them from agents and the aggregator by name::

    name: self-moa-smollm2
    backends:
      local: {type: vllm, model: "embedded:smollm2-135m-instruct"}
    layers:
      - agents: [{backend: local, n: 6, temperature: 0.7, max_tokens: 512}]
    aggregator: {type: synthesize, backend: local, temperature: 0.0}

The parts: ``backends`` (each backend ``type``), ``policies`` (rate limits, retries, hedging), ``layers`` (agents,
their sampling fields, quorum, references), ``aggregator``, ``ensemble`` (the whole config and the checks across
its parts) and ``loading`` (environment, ``by_device``, files and shipped recipes). ``moa.defense_config`` holds
the red-team and defense parts. Everything is importable from here.
"""

from __future__ import annotations

from moa.config.aggregator import (
    AGGREGATOR_TYPES,
    AggregatorBase,
    AggregatorCall,
    AggregatorConfig,
    SelfMoASeqConfig,
    SynthesizeConfig,
    plan_windows,
)
from moa.config.backends import (
    BACKEND_TYPES,
    BackendConfig,
    BackendConfigBase,
    ChatTemplateRules,
    OpenAIBackendConfig,
    SpeculativeConfig,
    TorchBackendConfig,
    VLLMBackendConfig,
    VLLMSpeculativeConfig,
)
from moa.config.ensemble import EnsembleConfig, describe_config
from moa.config.layers import (
    AgentConfig,
    LayerConfig,
    ReferencesAt,
    ReferencesConfig,
    SamplingConfig,
    StructuredConfig,
    WaitPolicy,
)
from moa.config.loading import (
    DEVICE_ENV,
    DEVICES,
    Device,
    builtin_configs,
    config_error,
    load_config,
    local_device,
    parse_config,
)
from moa.config.policies import HedgePolicy, RateLimit, RetryPolicy
from moa.validation import ConfigProblems

__all__ = [
    "AGGREGATOR_TYPES",
    "BACKEND_TYPES",
    "DEVICES",
    "DEVICE_ENV",
    "AgentConfig",
    "AggregatorConfig",
    "AggregatorBase",
    "AggregatorCall",
    "BackendConfig",
    "BackendConfigBase",
    "ChatTemplateRules",
    "ConfigProblems",
    "Device",
    "EnsembleConfig",
    "HedgePolicy",
    "LayerConfig",
    "OpenAIBackendConfig",
    "RateLimit",
    "ReferencesAt",
    "ReferencesConfig",
    "StructuredConfig",
    "RetryPolicy",
    "SelfMoASeqConfig",
    "SamplingConfig",
    "SpeculativeConfig",
    "SynthesizeConfig",
    "TorchBackendConfig",
    "VLLMBackendConfig",
    "VLLMSpeculativeConfig",
    "WaitPolicy",
    "builtin_configs",
    "config_error",
    "describe_config",
    "load_config",
    "local_device",
    "parse_config",
    "plan_windows",
]
