"""Speculative decoding with the torch backend on the embedded SmolLM2-135M-Instruct, on this machine.

Every policy runs side by side in one run, prompt by prompt in turn (so drift on a shared machine hits all
alike), and prints one line: target forwards per generated token (and its inverse), discarded draft tokens
per token, decode tokens/s, end-to-end tokens/s (prefill included) and both speedups over plain decoding.
Greedy outputs are checked token for token against plain decoding.

1. Reference drafting on real aggregation prompts: AlpacaEval instructions, each with 4 answers sampled by
   the same model as references, in moa's synthesis prompt; greedy aggregator.
2. With a trained self-draft (``--draft``, from ``moa specdec train-draft``) and acceptance head (``--head``,
   from ``moa specdec train-head``): fixed K (a sweep), the +2/-1 heuristic, draft confidence, SpecDec++.

    python -m benchmarks.bench_specdec [--prompts 6] [--draft D.safetensors --head H.safetensors] [--threads 1]
        [--part 1|2|all] [--h 0.3 0.5 0.7] [--json PATH]   (--h: SpecDec++ thresholds, each with bounds (2, 20) and
        (1, 20))
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.data import alpaca_eval_instructions
from benchmarks.figures import add_json_option, write_figures
from moa.prompts import SYNTHESIZE_INSTRUCTIONS, with_references
from moa.types import Message
from proposers.specdec import head as head_file
from proposers.specdec.data import encode_chat, stop_ids
from proposers.specdec.decode import DecodeStats, Drafter, forward, generate, generate_batch, new_cache, run
from proposers.specdec.identity import model_hash
from proposers.specdec.loading import load_draft, load_target
from proposers.specdec.lookup import LookupDrafter
from proposers.specdec.model_draft import ModelDrafter
from proposers.specdec.policies import AcceptanceStop, Confidence, FixedLength, Heuristic
from proposers.specdec.sampling import Sampler, make_generator

MODEL = "embedded:smollm2-135m-instruct"
GREEDY = Sampler(0.0)


def references(model, tokenizer, instructions: list[str], n: int, max_tokens: int, seed: int) -> list[list[str]]:
    """``n`` answers to each instruction sampled by the model itself (temperature 0.7, moa's torch sampler)."""
    sampler, stop = Sampler(0.7, 1.0, make_generator(seed)), stop_ids(model, tokenizer)
    out = []
    for text in instructions:
        rows, _ = generate_batch(model, encode_chat(tokenizer, [{"role": "user", "content": text}]), sampler,
                                 max_tokens, stop, n)  # fmt: skip
        out.append([tokenizer.decode(r, skip_special_tokens=True) for r in rows])
    return out


def compare(model, prompts: list[list[int]], policies: dict[str, Callable[[], Drafter | None]], max_new: int,
            stop: frozenset[int]) -> dict[str, tuple[DecodeStats, bool]]:  # fmt: skip
    """Summed stats of each policy over the prompts, and whether its outputs equalled plain decoding's."""
    totals = {name: (DecodeStats(), True) for name in policies}
    for prompt in prompts:
        plain: list[int] | None = None
        for name, make in policies.items():
            tokens, stats = run(generate(model, prompt, GREEDY, max_new, stop, make()))
            plain = tokens if plain is None else plain
            total, same = totals[name]
            total.add(stats)
            totals[name] = (total, same and tokens == plain)
    return totals


def table(title: str, totals: dict[str, tuple[DecodeStats, bool]]) -> dict[str, Any]:
    """Print one line per policy; return the same figures by ``policy.figure``."""
    print(f"\n{title}")
    print(f"{'policy':<26}{'tok/fwd':>8}{'fwd/tok':>8}{'disc/tok':>9}{'accept':>8}{'dec tok/s':>10}"
          f"{'e2e tok/s':>10}{'dec x':>7}{'e2e x':>7}  same as plain")  # fmt: skip
    base = next(iter(totals.values()))[0]
    figures: dict[str, Any] = {}
    for name, (s, same) in totals.items():
        dec, e2e = s.generated / s.decode_s, s.generated / (s.decode_s + s.prefill_s)
        base_dec, base_e2e = base.generated / base.decode_s, base.generated / (base.decode_s + base.prefill_s)
        print(f"{name:<26}{s.tokens_per_forward:>8.2f}{1 / s.tokens_per_forward:>8.2f}{s.discarded_per_token:>9.2f}"
              f"{s.acceptance:>8.2f}{dec:>10.1f}{e2e:>10.1f}{dec / base_dec:>7.2f}{e2e / base_e2e:>7.2f}  "
              f"{'yes' if same else 'NO'}")  # fmt: skip
        row = {
            "tokens_per_forward": s.tokens_per_forward,
            "discarded_per_token": s.discarded_per_token,
            "acceptance": s.acceptance,
            "decode_tok_per_s": dec,
            "e2e_tok_per_s": e2e,
            "decode_speedup": dec / base_dec,
            "e2e_speedup": e2e / base_e2e,
            "same_as_plain": same,
        }
        figures.update({f"{name}.{k}": v for k, v in row.items()})
    return figures


@torch.inference_mode()
def forward_costs(model, prompt: list[int], draft=None, repeats: int = 10) -> tuple[str, dict[str, float]]:
    """Milliseconds of a 1-token and a 7-token (K=6 verify) target forward after ``prompt``, and of a draft step."""
    cache = new_cache(model)
    forward(model, torch.tensor([prompt]), cache)

    def ms(m, ids: torch.Tensor, c) -> float:
        started = time.perf_counter()
        for _ in range(repeats):
            forward(m, ids, c, keep=ids.shape[1])
            c.crop(-ids.shape[1])
        return (time.perf_counter() - started) / repeats * 1000

    one, seven = ms(model, torch.tensor([[prompt[-1]]]), cache), ms(model, torch.tensor([prompt[-7:]]), cache)
    line = f"target forward: 1 token {one:.1f} ms, 7 tokens {seven:.1f} ms ({seven / one:.2f}x)"
    costs = {"target_1_token_ms": one, "target_7_tokens_ms": seven}
    if draft is not None:
        dcache = new_cache(draft)
        forward(draft, torch.tensor([prompt]), dcache)
        costs["draft_step_ms"] = ms(draft, torch.tensor([[prompt[-1]]]), dcache)
        line += f"; draft step {costs['draft_step_ms']:.1f} ms"
    return line, costs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=6, help="AlpacaEval instructions (the first ones)")
    ap.add_argument("--references", type=int, default=4)
    ap.add_argument("--reference-tokens", type=int, default=160)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--draft", help="self-draft from `moa specdec train-draft` (part 2)")
    ap.add_argument("--head", help="acceptance head from `moa specdec train-head` (part 2)")
    ap.add_argument("--draft-prompts", type=int, default=4, help="instructions for part 2")
    ap.add_argument("--draft-max-new-tokens", type=int, default=128, help="new tokens in part 2")
    ap.add_argument("--part", choices=["1", "2", "all"], default="all", help="run part 1, part 2 or both")
    ap.add_argument("--h", type=float, nargs="+", help="SpecDec++ thresholds (default: the head's h, 0.3, 0.5)")
    ap.add_argument("--cache", help="JSON file keeping the sampled references between runs")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="the target's (and draft's)")
    ap.add_argument("--seed", type=int, default=0)
    add_json_option(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, target_hash = load_target(MODEL, torch.device("cpu"), getattr(torch, args.dtype))
    stop = stop_ids(model, tokenizer)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; target {MODEL} {args.dtype}")  # fmt: skip
    instructions = alpaca_eval_instructions(args.prompts)
    figures: dict[str, Any] = {"torch_threads": torch.get_num_threads(), "dtype": args.dtype}
    if args.part != "2":
        figures.update({f"part1.{k}": v for k, v in reference_part(model, tokenizer, instructions, stop, args).items()})
    if args.part != "1":
        part2 = draft_part(model, tokenizer, target_hash, instructions, stop, args)
        figures.update({f"part2.{k}": v for k, v in part2.items()})
    write_figures(args.json, "bench_specdec", args, figures)


def reference_part(model, tokenizer, instructions: list[str], stop: frozenset[int],
                   args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.is_file():
        refs = json.loads(cache.read_text())[: args.prompts]
    else:
        started = time.perf_counter()
        refs = references(model, tokenizer, instructions, args.references, args.reference_tokens, args.seed)
        print(f"sampled {args.references} references for each of {len(refs)} instructions in "
              f"{time.perf_counter() - started:.0f} s")  # fmt: skip
        if cache is not None:
            cache.write_text(json.dumps(refs))
    prompts = [
        encode_chat(tokenizer, [m.to_dict() for m in with_references([Message("user", q)], r, SYNTHESIZE_INSTRUCTIONS)])
        for q, r in zip(instructions, refs, strict=True)
    ]
    line, costs = forward_costs(model, prompts[0])
    print(line)
    totals = compare(model, prompts, {
        "plain": lambda: None,
        "reference (default)": lambda: LookupDrafter(2, 20, 3),  # K = match length in [2, 20], match >= 3
        "reference match>=2": lambda: LookupDrafter(2, 20, 2),
        "reference fixed K=4": lambda: LookupDrafter(4, 4, 3),
        "reference fixed K=8": lambda: LookupDrafter(8, 8, 3),
    }, args.max_new_tokens, stop)  # fmt: skip
    mean_prompt = sum(map(len, prompts)) / len(prompts)
    figures = table(f"(1) reference drafting: {len(prompts)} aggregation prompts (mean {mean_prompt:.0f} tokens), "
                    f"greedy, {args.max_new_tokens} new tokens", totals)  # fmt: skip
    return {**costs, "mean_prompt_tokens": mean_prompt, **figures}


def draft_part(model, tokenizer, target_hash: str, instructions: list[str], stop: frozenset[int],
               args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    if not (args.draft and args.head):
        print("\n(2) skipped: pass --draft and --head (see docs/specdec.md)")
        return {}
    draft, vocab, draft_hash = load_draft(args.draft, model, tokenizer, target_hash, "--draft")
    head, h = head_file.load(args.head, target_hash=target_hash, draft_hash=draft_hash, field="--head")
    head = head.to(dtype=model.dtype)  # as the torch backend does
    size = model.get_output_embeddings().out_features
    plain_prompts = [
        encode_chat(tokenizer, [{"role": "user", "content": q}]) for q in instructions[: args.draft_prompts]
    ]
    line, costs = forward_costs(model, plain_prompts[0], draft)
    print(f"\ndraft {args.draft} ({model_hash(args.draft)[:12]}), head h={h}; " + line)

    def drafter(policy) -> Callable[[], Drafter]:
        return lambda: ModelDrafter(draft, policy(), size, vocab)

    policies: dict[str, Callable[[], Drafter | None]] = {"plain": lambda: None}
    for k in (1, 2, 3, 4, 6):
        policies[f"fixed K={k}"] = drafter(lambda k=k: FixedLength(k))
    policies["heuristic (+2/-1)"] = drafter(lambda: Heuristic(2, 20))
    for t in (0.2, 0.5):
        policies[f"confidence {t}"] = drafter(lambda t=t: Confidence(t, 2, 20))
    thresholds = sorted(set(args.h or {h, 0.3, 0.5}))
    for hh in thresholds:
        policies[f"specdec++ h={hh:g}"] = drafter(lambda hh=hh: AcceptanceStop(head, hh, 2, 20))
    for hh in thresholds if args.h else [h]:
        policies[f"specdec++ h={hh:g} (1..20)"] = drafter(lambda hh=hh: AcceptanceStop(head, hh, 1, 20))
    new = args.draft_max_new_tokens
    figures = table(f"(2) trained self-draft: {len(plain_prompts)} AlpacaEval instructions, greedy, {new} new tokens",
                    compare(model, plain_prompts, policies, new, stop))  # fmt: skip
    return {**costs, "head_h": h, **figures}


if __name__ == "__main__":
    main()
