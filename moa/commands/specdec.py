"""``moa specdec train-draft`` and ``moa specdec train-head``: the small trained files of speculative decoding.

Both print a report (JSON) on stdout and progress on stderr, and return an exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moa.errors import ConfigError

if TYPE_CHECKING:
    from proposers.specdec.causal_lm import CausalLM
    from proposers.specdec.data import Sample

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    specdec = subparsers.add_parser("specdec", help="train drafts and acceptance heads for speculative decoding")
    sub = specdec.add_subparsers(dest="specdec_command", required=True, metavar="COMMAND")

    sample = sub.add_parser("sample", help="sample the target's responses to prompts once, for training (JSONL)")
    sample.add_argument("--target", required=True, help="the target model: a Hugging Face folder or embedded:<name>")
    sample.add_argument("--prompts", required=True, help="prompts: .txt (one a line), .json or .jsonl")
    sample.add_argument("-o", "--output", required=True, help="the .jsonl file to write")
    sample.add_argument(
        "--engine",
        choices=["vllm", "torch"],
        default="vllm",
        help="vllm: batched, much faster on CPU too (default); torch: no vLLM needed",
    )
    sample.add_argument("--max-model-len", type=int, default=2048, help="vllm: longer prompts are dropped (2048)")
    _sampling(sample)
    sample.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch engine only")
    sample.add_argument("--threads", type=int, help="torch CPU threads (torch engine)")
    sample.set_defaults(func=cmd_sample)

    draft = sub.add_parser("train-draft", help="distil a self-speculative draft block on the target's outputs")
    _common(draft)
    draft.add_argument("--layers", type=int, default=6, help="target layers the draft keeps (default 6)")
    draft.add_argument("--block-layers", type=int, default=1, help="trained decoder layers on top (default 1)")
    draft.add_argument(
        "--draft-vocab",
        type=int,
        default=8192,
        help="rows of the draft's head: the tokens the target uses most (0: all; default 8192)",
    )
    draft.add_argument("--lr", type=float, default=5e-4)
    draft.add_argument("--epochs", type=int, default=3)
    draft.set_defaults(func=cmd_train_draft)

    head = sub.add_parser("train-head", help="train SpecDec++'s acceptance head for a target and a draft")
    _common(head)
    head.add_argument("--draft", required=True, help="a self-draft .safetensors or a smaller model (path or embedded:)")
    head.add_argument("--mix-rate", type=float, default=0.15, help="share of target tokens in the drafts (0.15)")
    head.add_argument("--reject-weight", type=float, default=6.0, help="loss weight of rejections (6)")
    head.add_argument(
        "--threshold",
        type=float,
        default=0.7,
        help="h stored with the head: stop drafting once P(some draft token is rejected) exceeds it (0.7)",
    )
    head.add_argument("--blocks", type=int, default=3, help="residual SiLU blocks (3)")
    head.add_argument("--draft-temperature", type=float, default=1.0, help="temperature the labels assume (1.0)")
    head.add_argument("--lr", type=float, default=3e-4)
    head.add_argument("--epochs", type=int, default=40, help="at most; the best epoch on a validation split is kept")
    head.set_defaults(func=cmd_train_head)


def _sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=2, help="target responses per prompt (2; 1 when greedy)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens per response (128)")
    p.add_argument("--temperature", type=float, default=0.7, help="the target's sampling temperature (0.7; 0: greedy)")
    p.add_argument("--skip", type=int, default=0, help="prompts to skip from the file's start (e.g. a test split)")
    p.add_argument("--limit", type=int, help="prompts to use at most")
    p.add_argument("--seed", type=int, default=0)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="the target model: a Hugging Face folder or embedded:<name>")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--prompts", help="prompts: .txt (one a line), .json or .jsonl; the target answers them here")
    data.add_argument(
        "--responses",
        nargs="+",
        metavar="JSONL",
        help="the target's responses from `moa specdec sample` instead of --prompts",
    )
    p.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    _sampling(p)
    p.add_argument("--holdout", type=float, default=0.1, help="share held out for the report (0.1)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, help="torch CPU threads (on a busy shared machine 1 is often fastest)")


def _check(args: argparse.Namespace, suffix: str = ".safetensors") -> None:
    if not args.output.endswith(suffix):
        raise ConfigError(f"must end in {suffix}", "--output")
    if not Path(args.output).parent.exists():
        raise ConfigError(f"no folder {Path(args.output).parent}", "--output")
    for name in ("samples", "max_new_tokens", "epochs", "skip", "limit", "threads", "max_model_len"):
        value = getattr(args, name, None)
        if value is not None and value < (0 if name in ("epochs", "skip") else 1):
            raise ConfigError("must be positive", f"--{name.replace('_', '-')}")
    if args.temperature < 0:
        raise ConfigError("must be 0 (greedy) or more", "--temperature")
    if not 0 < getattr(args, "holdout", 0.5) < 1:
        raise ConfigError("must be between 0 and 1", "--holdout")
    for name in ("prompts", "responses"):  # before any model loads
        given = getattr(args, name, None) or []
        for path in [given] if isinstance(given, str) else given:
            if not Path(path).is_file():
                raise ConfigError(f"no such file: {path}", f"--{name}")


def _prompts(args: argparse.Namespace) -> list[str]:
    from proposers.specdec.data import read_prompts

    prompts = read_prompts(args.prompts)[args.skip :][: args.limit]
    if not prompts:
        raise ConfigError(f"no prompts left after skipping {args.skip}", "--skip")
    return prompts


def cmd_sample(args: argparse.Namespace) -> int:
    _check(args, ".jsonl")
    import time

    from proposers.specdec.data import stop_ids, target_responses, write_responses
    from proposers.specdec.loading import load_target, model_folder, pick_device

    prompts = _prompts(args)
    started = time.perf_counter()
    if args.engine == "vllm":
        from transformers import AutoTokenizer

        from proposers.specdec.vllm_responses import vllm_responses

        folder = model_folder(args.target, "--target")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        stop = stop_ids(None, tokenizer, folder)
        log.info(
            "sampling with vLLM: %d response(s) to %d prompts", args.samples if args.temperature else 1, len(prompts)
        )
        samples = vllm_responses(
            str(folder),
            tokenizer,
            prompts,
            samples=args.samples,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            seed=args.seed,
            stop_ids=stop,
            max_model_len=args.max_model_len,
        )
    else:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        model, tokenizer, _ = load_target(args.target, pick_device(args.device), torch.float32, "--target")
        log.info("sampling with torch: %d response(s) to each of %d prompts", args.samples, len(prompts))
        samples = target_responses(
            model,
            tokenizer,
            prompts,
            samples=args.samples,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            seed=args.seed,
            stop_ids=stop_ids(model, tokenizer),
        )
    write_responses(args.output, samples, tokenizer)
    tokens = sum(len(s.tokens) - s.start for s in samples)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "output": args.output,
                "responses": len(samples),
                "response_tokens": tokens,
                "seconds": round(seconds, 1),
                "tokens_per_s": round(tokens / seconds, 1),
            },
            indent=2,
        )
    )
    return 0


def _responses(args: argparse.Namespace) -> tuple[CausalLM, Any, str, list[Sample]]:
    """(target, tokenizer, target hash, the target's responses: read from --responses or sampled here)."""
    import torch

    from proposers.specdec.data import read_responses, stop_ids, target_responses
    from proposers.specdec.loading import load_target, pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, target_hash = load_target(args.target, pick_device(args.device), torch.float32, "--target")
    if args.responses:
        samples = read_responses(args.responses, model.get_output_embeddings().out_features)
        log.info("read %d responses from %s", len(samples), ", ".join(args.responses))
        return model, tokenizer, target_hash, samples
    prompts = _prompts(args)
    log.info("sampling %d response(s) to each of %d prompts", args.samples, len(prompts))
    samples = target_responses(
        model,
        tokenizer,
        prompts,
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        stop_ids=stop_ids(model, tokenizer),
    )
    return model, tokenizer, target_hash, samples


def cmd_train_draft(args: argparse.Namespace) -> int:
    _check(args)
    from proposers.specdec import self_draft
    from proposers.specdec.data import stop_ids
    from proposers.specdec.self_draft import SelfDraftSpec
    from proposers.specdec.train_draft import DraftTraining, train

    if args.layers < 1 or args.block_layers < 1:
        raise ConfigError("must be at least 1", "--layers" if args.layers < 1 else "--block-layers")
    model, tokenizer, target_hash, samples = _responses(args)
    cfg = DraftTraining(
        SelfDraftSpec(args.layers, args.block_layers), args.draft_vocab, args.epochs, args.lr, args.holdout, args.seed
    )
    blocks, vocab, report = train(model, samples, stop_ids(model, tokenizer), cfg, progress=log.info)
    self_draft.save(args.output, cfg.spec, blocks, vocab, target_hash, report)
    print(json.dumps({"output": args.output, "target_hash": target_hash, **report}, indent=2))
    return 0


def cmd_train_head(args: argparse.Namespace) -> int:
    _check(args)
    if not 0 <= args.mix_rate < 1:
        raise ConfigError("must be in [0, 1)", "--mix-rate")
    if not 0 < args.threshold < 1:
        raise ConfigError("must be between 0 and 1", "--threshold")
    from proposers.specdec import head as head_file
    from proposers.specdec.loading import load_draft
    from proposers.specdec.train_head import HeadTraining, examples, train

    model, tokenizer, target_hash, samples = _responses(args)
    draft, vocab, draft_hash = load_draft(args.draft, model, tokenizer, target_hash, "--draft")
    cfg = HeadTraining(
        args.mix_rate,
        args.reject_weight,
        args.threshold,
        args.blocks,
        args.draft_temperature,
        args.epochs,
        lr=args.lr,
        holdout=args.holdout,
        seed=args.seed,
    )
    log.info("scoring draft tokens against the target")
    feats, labels = examples(model, draft, vocab, samples, cfg)
    head, report = train(feats, labels, cfg, progress=log.info)
    head_file.save(
        args.output, head, target_hash=target_hash, draft_hash=draft_hash, threshold=args.threshold, report=report
    )
    print(json.dumps({"output": args.output, "target_hash": target_hash, "draft_hash": draft_hash, **report}, indent=2))
    return 0


__all__ = ["register"]
