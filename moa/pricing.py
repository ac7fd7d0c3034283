"""What a backend's tokens cost: prices per million tokens, per backend with per-model overrides."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

#: a price in USD per million tokens
PerMtok = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class TokenPrices(BaseModel):
    """USD per million tokens of one model; cached prompt tokens cost ``input_per_mtok`` unless priced."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_mtok: PerMtok
    output_per_mtok: PerMtok
    cached_input_per_mtok: PerMtok | None = Field(default=None, description="default: input_per_mtok")

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int = 0) -> float:
        """The dollars of a call with these tokens (cached ones are part of ``prompt_tokens``)."""
        cached = min(max(cached_prompt_tokens, 0), prompt_tokens)
        cached_price = self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok
        dollars = (
            (prompt_tokens - cached) * self.input_per_mtok
            + cached * cached_price
            + completion_tokens * self.output_per_mtok
        )
        return dollars / 1_000_000


class Prices(TokenPrices):
    """A backend's prices; ``models`` overrides them for the models it names."""

    models: dict[str, TokenPrices] = Field(default_factory=dict, description="per-model overrides")

    def for_model(self, model: str) -> TokenPrices:
        return self.models.get(model, self)
