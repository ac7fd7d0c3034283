"""``moa specdec``'s prompt files: each accepted shape, and a clear error naming ``--prompts`` for the others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moa.cli import main
from moa.errors import ConfigError
from proposers.specdec.data import read_prompts


def test_prompts_from_text_json_and_jsonl(tmp_path: Path) -> None:
    txt, as_json, jsonl = tmp_path / "p.txt", tmp_path / "p.json", tmp_path / "p.jsonl"
    txt.write_text("first\n\n  second  \n")
    as_json.write_text(json.dumps(["first", {"instruction": "second"}, {"other": 1}, {"prompt": " "}]))
    jsonl.write_text('{"prompt": "first"}\n\n{"text": "second", "instruction": 3}\n"ignored: not an object"\n')
    assert read_prompts(txt) == ["first", "second"]
    assert read_prompts(as_json) == ["first", "second"]
    assert read_prompts(jsonl) == ["first", "second", "ignored: not an object"]


@pytest.mark.parametrize("body", ['{"prompt": "a JSON object, not a list"}', "5", '"one string"', "null"])
def test_a_json_prompts_file_that_is_not_a_list_is_named(tmp_path: Path, body: str) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(body)
    with pytest.raises(ConfigError, match=r"^--prompts: .*prompts\.json: must be a JSON list"):
        read_prompts(path)


def test_the_cli_reports_a_bad_prompts_file_before_loading_any_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "prompts.json"
    path.write_text('{"instruction": "hello"}')
    argv = ["specdec", "sample", "--target", str(tmp_path / "no-model"), "--prompts", str(path), "--engine", "torch"]
    assert main([*argv, "-o", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --prompts: ") and "must be a JSON list" in err and "Traceback" not in err
