"""The checkpoint file: resume, torn last lines, refusal of another run's checkpoint; atomic JSON writes."""

from __future__ import annotations

import io
import json
import os

import pytest

from moa.alpaca_eval.checkpoint import Checkpoint, write_json_atomic
from moa.alpaca_eval.generate import GenerateOptions, generate
from moa.errors import ConfigError
from tests.support.ensembles import moa_config
from tests.support.scripted_server import ScriptedServer

IDENTITY = {"config": "aaaa", "instructions": "bbbb"}
ABOUT = {"config": "cfg-a (aaaa)", "instructions": "805 from AlpacaEval 2.0 (bbbb)"}


def _open(path, identity=IDENTITY, about=ABOUT, kind="alpaca-eval generate") -> Checkpoint:
    return Checkpoint.open(path, kind, identity, about)


def test_records_survive_reopening_and_first_record_wins(tmp_path) -> None:
    path = tmp_path / "c.jsonl"
    with _open(path) as ckpt:
        assert ckpt.records == {}
        ckpt.append({"index": 3, "output": "three"})
        ckpt.append({"index": 0, "output": "zero"})
        ckpt.append({"index": 3, "output": "again"})
    with _open(path) as ckpt:
        assert ckpt.records == {3: {"index": 3, "output": "three"}, 0: {"index": 0, "output": "zero"}}
    assert len(path.read_text().splitlines()) == 4  # header + three appends: append-only


@pytest.mark.parametrize("tail", [b'{"index": 5, "out', b'{"index": 5, "output": "cut\n'])
def test_a_torn_last_line_is_cut_off_and_appends_continue(tmp_path, tail: bytes) -> None:
    path = tmp_path / "c.jsonl"
    with _open(path) as ckpt:
        ckpt.append({"index": 1, "output": "one"})
    with open(path, "ab") as f:
        f.write(tail)  # what a process killed in the middle of a write leaves
    with _open(path) as ckpt:
        assert set(ckpt.records) == {1}
        ckpt.append({"index": 2, "output": "two"})
    lines = path.read_text().splitlines()
    assert [json.loads(line).get("index") for line in lines] == [None, 1, 2]


def test_a_torn_header_starts_over(tmp_path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"format": "moa-chec')
    with _open(path) as ckpt:
        assert ckpt.records == {}
    assert json.loads(path.read_text().splitlines()[0])["identity"] == IDENTITY


def test_another_runs_checkpoint_is_refused_and_left_alone(tmp_path) -> None:
    path = tmp_path / "c.jsonl"
    with _open(path) as ckpt:
        ckpt.append({"index": 0, "output": "zero"})
    before = path.read_bytes()
    other = {"config": "cccc", "instructions": "bbbb"}
    with pytest.raises(ConfigError) as info:
        _open(path, other, {"config": "cfg-b (cccc)", "instructions": ABOUT["instructions"]})
    message = str(info.value)
    assert "different config" in message and "'cfg-a (aaaa)'" in message and "'cfg-b (cccc)'" in message
    assert "instructions" not in message.split("(")[0]  # only what differs is named
    assert "delete the checkpoint" in message
    with pytest.raises(ConfigError, match="different config and instructions"):
        _open(path, {"config": "cccc", "instructions": "dddd"})
    with pytest.raises(ConfigError, match="checkpoint of `alpaca-eval generate`"):
        _open(path, kind="alpaca-eval evaluate")
    assert path.read_bytes() == before


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path) -> None:
    path = tmp_path / "model_outputs.json.checkpoint.jsonl"
    path.write_text('[{"instruction": "x"}]\n')
    with pytest.raises(ConfigError, match="not a moa checkpoint"):
        _open(path)
    assert path.read_text() == '[{"instruction": "x"}]\n'


@pytest.mark.parametrize(
    "content",
    [
        b"first line\nsecond line, no newline",  # a torn-looking last line
        b'{"a": 1}\nnot json\n',  # a last line that does not parse
        b"just one line\n",
        b"no newline at all",
        b'{"format": "other"',
    ],
)
def test_a_refused_file_is_not_changed(tmp_path, content: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="not a moa checkpoint"):
        _open(path)
    assert path.read_bytes() == content


def test_another_runs_checkpoint_keeps_its_torn_tail(tmp_path) -> None:
    path = tmp_path / "c.jsonl"
    with _open(path) as ckpt:
        ckpt.append({"index": 0, "output": "zero"})
    with open(path, "ab") as f:
        f.write(b'{"index": 1, "out')
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="different config"):
        _open(path, {"config": "cccc", "instructions": "bbbb"})
    with pytest.raises(ConfigError, match="checkpoint of `alpaca-eval generate`"):
        _open(path, kind="alpaca-eval evaluate")
    assert path.read_bytes() == before
    with _open(path) as ckpt:  # its own run resumes it and cuts the tail
        assert set(ckpt.records) == {0}
    assert len(path.read_bytes().splitlines()) == 2


def test_a_header_written_in_full_but_unreadable_starts_over(tmp_path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"format": "moa-checkpoint/1", "kind": "alpaca-eval gen\n')
    with _open(path) as ckpt:
        assert ckpt.records == {}
    assert json.loads(path.read_text().splitlines()[0])["identity"] == IDENTITY


def test_a_damaged_middle_line_is_reported_with_its_line_number(tmp_path) -> None:
    path = tmp_path / "c.jsonl"
    with _open(path) as ckpt:
        ckpt.append({"index": 0})
        ckpt.append({"index": 1})
    lines = path.read_text().splitlines()
    lines[1] = "garbage"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"c.jsonl:2: unreadable checkpoint record"):
        _open(path)


def test_write_json_atomic_replaces_whole_and_leaves_no_temporary(tmp_path) -> None:
    path = tmp_path / "out" / "model_outputs.json"
    write_json_atomic(path, [{"a": 1}])
    write_json_atomic(path, [{"a": 2}, {"b": "é"}])
    assert json.loads(path.read_text(encoding="utf-8")) == [{"a": 2}, {"b": "é"}]
    assert os.listdir(path.parent) == ["model_outputs.json"]


LONE = ["high \ud83d alone", "low \udc00 alone", "split pair \ud83d\ude00"]  # what JSON "\ud83d" decodes to


def test_lone_surrogates_are_written_as_utf8_json(tmp_path) -> None:
    alpaca_utils = pytest.importorskip("alpaca_eval.utils")
    path = tmp_path / "c.jsonl"
    with _open(path) as ckpt:
        for i, text in enumerate(LONE):
            ckpt.append({"index": i, "output": text})
    readable = ["high \ufffd alone", "low \ufffd alone", "split pair \U0001f600"]
    with _open(path) as ckpt:
        assert [ckpt.records[i]["output"] for i in range(3)] == readable
    out = tmp_path / "model_outputs.json"
    write_json_atomic(out, [{"instruction": t, "output": t, "generator": "g", "dataset": "d"} for t in LONE])
    assert [row["output"] for row in json.loads(out.read_bytes().decode("utf-8"))] == readable
    assert alpaca_utils.load_or_convert_to_dataframe(str(out))["output"].tolist() == readable


async def test_generate_keeps_answers_with_lone_surrogates(upstream: ScriptedServer, tmp_path) -> None:
    alpaca_utils = pytest.importorskip("alpaca_eval.utils")
    upstream.script("p1", answer="draft \ud83d")
    upstream.script("agg", answer=lambda model, messages, i: f"final \udc00 for {messages[-1]['content'][:5]}")
    out = tmp_path / "model_outputs.json"
    report = await generate(GenerateOptions(moa_config(upstream.base_url, [["p1"]]), out, limit=3), io.StringIO())
    assert report.written and report.done == 3 and not report.failures
    outputs = alpaca_utils.load_or_convert_to_dataframe(str(out))["output"].tolist()
    assert len(outputs) == 3 and all(o.startswith("final \ufffd for ") for o in outputs)
    again = await generate(GenerateOptions(moa_config(upstream.base_url, [["p1"]]), out, limit=3), io.StringIO())
    assert again.resumed == 3 and alpaca_utils.load_or_convert_to_dataframe(str(out))["output"].tolist() == outputs
