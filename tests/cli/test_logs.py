"""Library code logs, the CLI prints: progress lines go to loggers, and moa.logs installs the one handler."""

from __future__ import annotations

import fcntl
import io
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moa.logs import LOGGERS, configure_logging
from moa.server.ids import CURRENT, LOG_FORMAT, RequestIdFilter
from proposers.embedded import ensure_converted, file_sha256

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def moa_loggers() -> Iterator[None]:
    """Puts the handlers and levels of moa's loggers back as they were."""
    saved = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).level) for name in LOGGERS}
    yield
    for name, (handlers, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)


def test_a_wait_for_another_conversion_is_logged_not_printed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"gguf" * 100)
    root = tmp_path / "models"
    final = root / f"tiny-{file_sha256(gguf, root)[:16]}"
    found: list[Path] = []
    with open(root / f".{final.name}.lock", "a") as lock, caplog.at_level(logging.INFO, logger="proposers"):
        fcntl.flock(lock, fcntl.LOCK_EX)  # "another process" is converting
        waiter = threading.Thread(target=lambda: found.append(ensure_converted("tiny", gguf, root=root)))
        waiter.start()
        try:
            deadline = time.monotonic() + 5
            while not caplog.records and waiter.is_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
            final.mkdir()  # ... and finishes
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        waiter.join(timeout=5)
    assert found == [final]
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("proposers.embedded", logging.INFO, "another process is converting tiny; waiting")
    ]
    assert capsys.readouterr().err == ""  # library code writes nothing to stderr itself


def test_the_cli_prints_library_log_lines_as_moa_lines() -> None:
    code = (
        "import logging; from moa.cli import main; main(['configs']); "
        "logging.getLogger('proposers.vllm_engine').info('starting vLLM engine for backend %r', 'local'); "
        "logging.getLogger('moa.backend').debug('retry 1 in 0.5 s')"  # debug: not shown
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "moa: starting vLLM engine for backend 'local'\n"


def test_importing_moa_installs_no_handler() -> None:
    code = (
        "import logging, moa, moa.cli, moa.server.app, proposers.embedded, defenses.dropout, aggregators; "
        f"print(sum(len(logging.getLogger(n).handlers) for n in {LOGGERS!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout) == (0, "0\n"), done.stderr


def test_serve_format_replaces_the_cli_handler(moa_loggers: None) -> None:
    cli, served = io.StringIO(), io.StringIO()
    configure_logging(stream=cli)
    logging.getLogger("defenses.dropout").info("before")
    configure_logging(LOG_FORMAT, RequestIdFilter(), stream=served)
    token = CURRENT.set("req_abc")
    try:
        logging.getLogger("moa.server.protocol").info("refused a malformed request")
    finally:
        CURRENT.reset(token)
    assert cli.getvalue() == "moa: before\n"
    assert served.getvalue().endswith(" INFO moa.server.protocol [req_abc] refused a malformed request\n")
    assert all(len(logging.getLogger(name).handlers) == 1 for name in LOGGERS)
