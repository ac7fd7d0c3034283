"""The type of the Hugging Face causal LMs specdec loads: a ``PreTrainedModel`` that can ``generate``.

For annotations only (``AutoModelForCausalLM.from_pretrained`` returns such a model; transformers spells the
same class privately as ``_BaseModelWithGenerate``). Import it under ``TYPE_CHECKING``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import GenerationMixin, PreTrainedModel

    class CausalLM(PreTrainedModel, GenerationMixin):
        """A causal LM as transformers loads it."""


__all__ = ["CausalLM"]
