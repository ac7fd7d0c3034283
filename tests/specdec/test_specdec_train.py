"""Training a self-draft block and an acceptance head on a tiny target: held-out loss goes down, the trained
files load back only for the models they were made for, and the ``moa specdec`` commands run end to end."""

from __future__ import annotations

import argparse
import json
import random

import pytest
import torch
from transformers import AutoTokenizer

from moa.commands.specdec import register
from moa.errors import ConfigError
from proposers.embedded import resolve_model
from proposers.specdec import head as head_file
from proposers.specdec import self_draft
from proposers.specdec.data import Sample, read_responses, write_responses
from proposers.specdec.decode import generate_batch
from proposers.specdec.identity import model_hash
from proposers.specdec.sampling import Sampler, make_generator
from proposers.specdec.self_draft import SelfDraftSpec
from proposers.specdec.train_draft import DraftTraining, Student, choose_vocab, features, split_by_prompt
from proposers.specdec.train_draft import train as train_draft
from proposers.specdec.train_head import HeadTraining, examples
from proposers.specdec.train_head import train as train_head
from tests.support.specdec_tiny import near_copy, single_thread, tiny_llama  # noqa: F401 (single_thread: a fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def target():
    return tiny_llama(5, vocab=16, layers=3, sharpness=60.0)


@pytest.fixture(scope="module")
def samples(target) -> list[Sample]:
    """The target's own sampled continuations of random prompts."""
    sampler, rng = Sampler(1.0, 1.0, make_generator(0)), torch.Generator().manual_seed(0)
    out = []
    for _ in range(32):
        prompt = torch.randint(0, 16, (6,), generator=rng).tolist()
        rows, _ = generate_batch(target, prompt, sampler, 24, frozenset(), 1)
        out.append(Sample([*prompt, *rows[0]], len(prompt)))
    return out


def test_draft_training_lowers_held_out_loss(target, samples) -> None:
    cfg = DraftTraining(SelfDraftSpec(1), draft_vocab=0, epochs=4, lr=3e-3, holdout=0.25)
    _, _, report = train_draft(target, samples, frozenset(), cfg)
    assert report["after_loss"] < report["before_loss"] - 0.02
    assert report["after_sampled_acceptance"] > report["before_sampled_acceptance"]


def test_saved_draft_is_the_trained_student_and_refuses_other_targets(target, samples, tmp_path) -> None:
    cfg = DraftTraining(SelfDraftSpec(1), draft_vocab=10, epochs=1, lr=3e-3, holdout=0.25)
    blocks, vocab, report = train_draft(target, samples, frozenset({15}), cfg)
    assert vocab is not None and len(vocab) == 10 and 15 in vocab.tolist()
    path = tmp_path / "draft.safetensors"
    self_draft.save(path, cfg.spec, blocks, vocab, "target-hash", report)
    draft, loaded_vocab = self_draft.load(path, target, "target-hash")
    assert torch.equal(loaded_vocab, vocab)
    seq = samples[0]
    with torch.no_grad():
        ours = draft(torch.tensor([seq.tokens])).logits[0]  # [S, 10]
        student = Student(target, blocks, vocab)(features(target, [seq], 1)[0].inputs)  # [S, 10]
    assert torch.allclose(ours, student, atol=1e-4)
    with pytest.raises(ConfigError, match="not for this target"):
        self_draft.load(path, target, "another-target")


def test_held_out_split_keeps_each_prompts_responses_on_one_side() -> None:
    samples = [Sample([p, p, 9, r], 2) for p in range(10) for r in range(3)]  # 10 prompts x 3 responses
    ordered, held = split_by_prompt(samples, 0.25, random.Random(0))
    assert sorted(map(tuple, (s.tokens for s in ordered))) == sorted(map(tuple, (s.tokens for s in samples)))
    assert held == 9  # 25% of 30 is 7.5: whole prompts, so three of them
    test_prompts = {s.tokens[0] for s in ordered[:held]}
    assert len(test_prompts) == 3 and not test_prompts & {s.tokens[0] for s in ordered[held:]}


def test_responses_file_round_trips_and_names_bad_lines(tmp_path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("embedded:smollm2-135m-instruct"))
    samples = [Sample([1, 2, 3, 40, 50], 3), Sample([7, 8, 9], 1)]
    path = tmp_path / "r.jsonl"
    write_responses(path, samples, tokenizer)
    assert read_responses([path, path], len(tokenizer)) == samples * 2
    assert json.loads(path.read_text().splitlines()[0])["response"] == tokenizer.decode([40, 50])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(path.read_text() + json.dumps({"prompt_ids": [1], "response_ids": [len(tokenizer)]}) + "\n")
    with pytest.raises(ConfigError, match="bad.jsonl:3: needs a prompt and a response"):
        read_responses([bad], len(tokenizer))
    bad.write_text('{"prompt_ids": [1]}\n')
    with pytest.raises(ConfigError, match="bad.jsonl:1: not a response line"):
        read_responses([bad], len(tokenizer))
    with pytest.raises(ConfigError, match="no such file"):
        read_responses([tmp_path / "none.jsonl"], len(tokenizer))


def test_choose_vocab_keeps_stop_ids_and_frequent_tokens() -> None:
    samples = [Sample([0, 0, 9, 9, 9, 7], 2)]
    vocab = choose_vocab(samples, 4, frozenset({15}), 16).tolist()
    assert {9, 7, 15} <= set(vocab) and len(vocab) == 4 and vocab == sorted(vocab)
    assert choose_vocab(samples, 0, frozenset(), 16) is None


def test_head_training_lowers_held_out_loss_and_refuses_other_models(target, samples, tmp_path) -> None:
    draft = near_copy(target, noise=0.4, seed=2)
    cfg = HeadTraining(epochs=60, holdout=0.25)
    feats, labels = examples(target, draft, None, samples, cfg)
    assert len(labels) > 0.7 * sum(len(s.tokens) - s.start for s in samples)  # ~85% of positions are draft tokens
    assert 0 < float(labels.mean()) < 1
    head, report = train_head(feats, labels, cfg)
    assert report["after_loss"] < report["before_loss"] - 0.05
    assert report["after_loss"] < report["constant_loss"]  # it learned more than the mean acceptance
    assert report["after_ece"] < report["before_ece"]
    path = tmp_path / "head.safetensors"
    head_file.save(path, head, target_hash="t", draft_hash="d", threshold=0.6, report=report)
    loaded, h = head_file.load(path, target_hash="t", draft_hash="d")
    assert h == 0.6 and torch.allclose(loaded(feats[:5]), head(feats[:5]))
    with pytest.raises(ConfigError, match="another draft"):
        head_file.load(path, target_hash="t", draft_hash="other")
    with pytest.raises(ConfigError, match="another target"):
        head_file.load(path, target_hash="other", draft_hash="d")
    with pytest.raises(ConfigError, match="not a moa-acceptance-head"):
        head_file.load(_draft_file(tmp_path), target_hash="t", draft_hash="d")


def _draft_file(tmp_path):
    path = tmp_path / "not-a-head.safetensors"
    self_draft.save(path, SelfDraftSpec(1), torch.nn.ModuleList(), None, "t", {})
    return path


# ---- the commands, on a tiny model that speaks the embedded model's tokenizer ---------------------------


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny random Llama with the embedded SmolLM2 tokenizer and chat template, saved as a model folder."""
    folder = tmp_path_factory.mktemp("tiny-chat")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("embedded:smollm2-135m-instruct"))
    model = tiny_llama(6, vocab=len(tokenizer), layers=3)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def specdec(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="moa")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["specdec", *argv])
    return args.func(args)


def test_train_draft_and_train_head_commands(tiny_folder, tmp_path, capsys) -> None:
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"instruction": f"Tell me about topic {i}."} for i in range(6)]))
    draft, head = str(tmp_path / "draft.safetensors"), str(tmp_path / "head.safetensors")
    common = ["--target", str(tiny_folder), "--prompts", str(prompts), "--max-new-tokens", "12", "--holdout", "0.3"]
    assert specdec("train-draft", *common, "--layers", "1", "--draft-vocab", "512", "--epochs", "1", "-o", draft) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["target_hash"] == model_hash(tiny_folder) and "after_greedy_agreement" in report
    assert specdec("train-head", *common, "--draft", draft, "--epochs", "5", "--threshold", "0.6", "-o", head) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["draft_hash"] == model_hash(draft) and "after_ece" in report
    assert head_file.load(head, target_hash=model_hash(tiny_folder), draft_hash=model_hash(draft))[1] == 0.6


def test_sampled_responses_file_feeds_both_trainings(tiny_folder, tmp_path, capsys) -> None:
    """``moa specdec sample`` (torch engine here; vLLM in test_specdec_vllm.py) writes the target's responses
    once; ``--responses`` trains on exactly those instead of sampling again."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"Tell me about topic {i}.\n" for i in range(5)))
    responses = tmp_path / "responses.jsonl"
    assert specdec("sample", "--target", str(tiny_folder), "--prompts", str(prompts), "--engine", "torch",
                   "--samples", "2", "--max-new-tokens", "10", "--skip", "1", "-o", str(responses)) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    lines = [json.loads(line) for line in responses.read_text().splitlines()]
    assert report["responses"] == len(lines) == 8  # 4 prompts after --skip 1, 2 samples each
    assert report["response_tokens"] == sum(len(x["response_ids"]) for x in lines)
    draft = str(tmp_path / "draft.safetensors")
    common = ["--target", str(tiny_folder), "--responses", str(responses), "--holdout", "0.3"]
    assert specdec("train-draft", *common, "--layers", "1", "--draft-vocab", "512", "--epochs", "1", "-o", draft) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["train_sequences"] + report["heldout_sequences"] == 8
    assert report["heldout_sequences"] == 2  # 30% of 8 is 2.4: one whole prompt, both its responses
    head = str(tmp_path / "head.safetensors")
    assert specdec("train-head", *common, "--draft", draft, "--epochs", "2", "-o", head) == 0
    assert "after_ece" in json.loads(capsys.readouterr().out)


def test_commands_name_the_bad_argument(tiny_folder, tmp_path) -> None:
    with pytest.raises(ConfigError, match="--output"):
        specdec("train-draft", "--target", str(tiny_folder), "--prompts", "x.txt", "-o", str(tmp_path / "d.bin"))
    with pytest.raises(ConfigError, match="--prompts"):
        specdec("train-draft", "--target", str(tiny_folder), "--prompts", str(tmp_path / "none.txt"),
                "-o", str(tmp_path / "d.safetensors"))  # fmt: skip
    with pytest.raises(ConfigError, match="--target"):
        (tmp_path / "p.txt").write_text("hello\n")
        specdec("train-draft", "--target", str(tmp_path), "--prompts", str(tmp_path / "p.txt"),
                "-o", str(tmp_path / "d.safetensors"))  # fmt: skip
    with pytest.raises(ConfigError, match="--output"):
        specdec("sample", "--target", str(tiny_folder), "--prompts", "x.txt", "-o", str(tmp_path / "r.json"))
    with pytest.raises(ConfigError, match="--responses"):
        specdec("train-draft", "--target", str(tiny_folder), "--responses", str(tmp_path / "none.jsonl"),
                "-o", str(tmp_path / "d.safetensors"))  # fmt: skip
    with pytest.raises(ConfigError, match="--responses"):  # checked before any model loads
        specdec("train-head", "--target", str(tmp_path / "no-model"), "--draft", str(tiny_folder),
                "--responses", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "h.safetensors"))  # fmt: skip
    with pytest.raises(SystemExit):  # --prompts and --responses are exclusive
        specdec("train-draft", "--target", str(tiny_folder), "--prompts", "p.txt", "--responses", "r.jsonl",
                "-o", str(tmp_path / "d.safetensors"))  # fmt: skip
