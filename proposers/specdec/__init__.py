"""Speculative decoding for the torch backend, one role per module.

- ``sampling``: the distribution a request samples from (temperature, top-p) and drawing from it.
- ``verify``: the lossless acceptance rules (sampled and greedy) and the ``Draft`` / ``VerifyResult`` values.
- ``decode``: ``prefill``, ``decode_one_token``, ``speculative_decode`` and the generation loops built on them.
- ``model_draft``: a draft model with its own KV cache; ``policies``: how long its drafts are (fixed K,
  +2/-1 heuristic, confidence, SpecDec++'s acceptance head).
- ``lookup``: reference drafting, candidates copied from the prompt (no draft model).
- ``self_draft``: a draft made of the target's first k layers, a trained block and the target's head.
- ``head``: SpecDec++'s acceptance head; ``identity``: model hashes and the metadata of trained files.
- ``data``, ``train_draft``, ``train_head``: what ``moa specdec train-draft`` / ``train-head`` run.
- ``loading``, ``runner``: loading a target and its draft from a config, and serving one request.
"""
