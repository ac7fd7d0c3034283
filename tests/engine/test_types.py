"""``SamplingParams.merged``: overrides that are set win, ``None`` leaves the field as it was."""

from __future__ import annotations

import pytest

from moa.types import SamplingParams


def test_merged_applies_the_overrides_that_are_set() -> None:
    base = SamplingParams(temperature=0.7, max_tokens=64, stop=("\n",))
    merged = base.merged(temperature=0.0, max_tokens=None, seed=3)
    assert merged == SamplingParams(temperature=0.0, max_tokens=64, stop=("\n",), seed=3)
    assert base.merged() == base and base.temperature == 0.7  # a copy: the original is frozen and unchanged


def test_merged_refuses_a_name_that_is_not_a_field() -> None:
    with pytest.raises(TypeError, match="top_a"):  # not a field (top_k is vLLM's, declared since)
        SamplingParams().merged(**{"top_a": 5})
