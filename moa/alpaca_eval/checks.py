"""What keeps a local evaluation from misleading: the judge's position bias, a bootstrap interval for the win
rate, when the length-controlled GLM may be fitted, and whether the judge is one of alpaca_eval's annotators.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: fewer judged instructions than this: no LC win rate (a 3-parameter GLM on a handful of rows fits noise: 3
#: outputs judged by a 135M model gave "LC 100.00")
MIN_LC_INSTRUCTIONS = 100
#: a judge choosing one position (A or B) more often than this is warned about
POSITION_BIAS_WARN = 0.70
BOOTSTRAP_ROUNDS = 2000

#: judge models of alpaca_eval's annotators (evaluators_configs/*/configs.yaml), by the annotator AlpacaEval 2.0's
#: leaderboard is judged by first
ANNOTATOR_MODELS = {
    "gpt-4-1106-preview": "weighted_alpaca_eval_gpt4_turbo",
    "gpt-4o-mini-2024-07-18": "weighted_alpaca_eval_gpt-4o-mini-2024-07-18",
    "llama-3-70b-chat-hf": "alpaca_eval_llama3_70b_fn",
    "meta-llama-3-70b-instruct": "weighted_alpaca_eval_vllm_llama3_70b",
}
LEADERBOARD_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"


def bootstrap_interval(p_model: Sequence[float], rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> tuple[float, float]:
    """The 95% percentile bootstrap interval of the mean preference, in percent (instructions resampled)."""
    p = np.asarray(p_model, float)  # [N]
    if p.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = p[rng.integers(0, p.size, (rounds, p.size))].mean(axis=1)  # [rounds]
    low, high = np.percentile(means, [2.5, 97.5])
    return (100 * float(low), 100 * float(high))


def position_a_share(positions: Sequence[str | None]) -> float | None:
    """The share of the judge's decided verdicts that chose answer A (None before any was decided)."""
    decided = [p for p in positions if p is not None]
    return sum(p == "A" for p in decided) / len(decided) if decided else None


def position_bias_warning(share_a: float | None) -> str | None:
    if share_a is None or max(share_a, 1 - share_a) <= POSITION_BIAS_WARN:
        return None
    letter, share = ("A", share_a) if share_a >= 0.5 else ("B", 1 - share_a)
    return (
        f"warning: the judge chose answer {letter} in {100 * share:.0f}% of its verdicts (above "
        f"{100 * POSITION_BIAS_WARN:.0f}%; an unbiased judge is near 50%): its verdicts follow the order of the "
        "answers more than their content, so these figures say little about the model"
    )


def lc_refusal(judged: int) -> str | None:
    """Why no LC win rate is given for ``judged`` instructions (None when the GLM may be fitted)."""
    if judged >= MIN_LC_INSTRUCTIONS:
        return None
    return (
        f"no length-controlled win rate: {judged} instruction(s) judged, and the length-controlled GLM needs at "
        f"least {MIN_LC_INSTRUCTIONS} to be fitted honestly (with fewer it fits noise); the raw win rate and its "
        "bootstrap interval are all there is"
    )


def annotator_of(model: str) -> str | None:
    """The alpaca_eval annotator whose judge is ``model`` (compared without an organisation prefix or case)."""
    return ANNOTATOR_MODELS.get(model.rsplit("/", 1)[-1].lower())


def comparability(judge: str, model: str) -> tuple[bool, str]:
    """Whether figures from this judge may be set beside the leaderboard's, and the line that says so."""
    annotator = annotator_of(model)
    if annotator == LEADERBOARD_ANNOTATOR:
        return True, (
            f"judge {judge}: the model of {annotator}, AlpacaEval 2.0's annotator, with moa's own judge prompt: "
            "close to, not the same as, the leaderboard's figures"
        )
    if annotator is not None:
        return False, (
            f"judge {judge}: the model of alpaca_eval's {annotator} annotator, not of the leaderboard's "
            f"({LEADERBOARD_ANNOTATOR}): not comparable to the leaderboard"
        )
    return False, f"judge {judge} is not one of alpaca_eval's annotators: not comparable to the leaderboard"


__all__ = [
    "ANNOTATOR_MODELS",
    "LEADERBOARD_ANNOTATOR",
    "MIN_LC_INSTRUCTIONS",
    "POSITION_BIAS_WARN",
    "annotator_of",
    "bootstrap_interval",
    "comparability",
    "lc_refusal",
    "position_a_share",
    "position_bias_warning",
]
