"""A proposer running a Hugging Face causal LM with moa's own torch decode loop (``type: torch``).

One worker thread per backend owns the model: requests queue for it, and the event loop never waits on
torch. A single sequence (``n == 1``, streamed or not) is decoded speculatively when the backend's
``speculative`` config asks for it; ``n > 1`` samples are decoded as one batch sharing one prefill. Greedy
``n > 1`` decodes once (every sample would be the same). Cancelling a call stops its decoding at the next
step (for a batch of samples, before its next batch step).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from moa.config import TorchBackendConfig
from moa.errors import BackendError, ConfigError, EngineError, NotFoundError
from moa.types import Delta, GenerateResult, Generation, Message, SamplingParams, Usage
from proposers.chat_template import TemplateRules, adapt
from proposers.local_input import local_messages
from proposers.local_template import probe_tokenizer
from proposers.specdec.runner import Runner

T = TypeVar("T")


class Cancelled(Exception):
    """The caller went away; the worker stops decoding."""


class Detokenizer:
    """Token ids in, text out piece by piece, cut at the first stop string.

    Text that may still change is held back: a trailing partial UTF-8 character, and a tail that could be
    the start of a stop string.
    """

    def __init__(self, tokenizer: Any, stop: Iterable[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.sent = 0  # characters emitted so far
        self.stopped = False

    def push(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        hits = [i for i in (text.find(s, max(self.sent - len(s), 0)) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            return self._emit(text, min(hits))
        safe = len(text.rstrip("\ufffd"))
        for s in self.stop:  # hold back a tail that a stop string starts with
            for n in range(min(len(s) - 1, safe), 0, -1):
                if text[safe - n : safe] == s[:n]:
                    safe -= n
                    break
        return self._emit(text, max(safe, self.sent))

    def finish(self) -> str:
        """The held-back rest once decoding ended without a stop string."""
        return "" if self.stopped else self._emit(self.tokenizer.decode(self.ids, skip_special_tokens=True), None)

    def _emit(self, text: str, end: int | None) -> str:
        end = len(text) if end is None else end
        piece, self.sent = text[self.sent : end], max(end, self.sent)
        return piece


class TorchProposer:
    supports_n = True

    def __init__(self, name: str, config: TorchBackendConfig) -> None:
        self.name = name
        self.config = config
        self._check_files(name, config)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"moa-torch-{name}")
        self._runner: Runner | None = None
        self.fields = config.field_support()  # what the decode loop implements; it refuses any other field set
        self.template_rules: TemplateRules | None = None  # probed from the model's template when it loads

    @staticmethod
    def _check_files(name: str, config: TorchBackendConfig) -> None:
        spec = config.speculative
        files = [] if spec is None else [("draft", spec.draft), ("head", spec.head)]
        for field, value in files:
            if value is not None and value.endswith(".safetensors") and not Path(value).is_file():
                raise ConfigError(f"no such file: {value}", f"backends.{name}.speculative.{field}")
        if not config.model.startswith("embedded:") and not Path(config.model).expanduser().is_dir():
            raise ConfigError(f"no model folder at {config.model}", f"backends.{name}.model")

    def __repr__(self) -> str:
        return f"TorchProposer(name={self.name!r}, model={self.config.model!r})"

    def _load(self) -> Runner:
        if self._runner is None:
            self._runner = Runner.load(self.name, self.config)
            self.template_rules = probe_tokenizer(self._runner.tokenizer, None, self.name)
        return self._runner

    def _encode(self, runner: Runner, messages: list[Message]) -> tuple[list[int], str | None]:
        """The prompt's token ids, the conversation fitted to the template's rules first; and how it was fitted."""
        messages, fitted = local_messages(self.name, self.config, messages)
        messages, note = adapt(messages, self.template_rules or TemplateRules())
        return runner.encode(messages), "; ".join(n for n in (fitted, note) if n) or None

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.config.model:
            raise NotFoundError(f"{self.name} serves {self.config.model}, not {model}", backend=self.name)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args, cancelled) on the worker thread; a cancelled caller sets ``cancelled``."""
        cancelled = threading.Event()
        future = asyncio.get_running_loop().run_in_executor(self._executor, lambda: self._mapped(fn, *args, cancelled))
        try:
            return await future
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def _mapped(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn``, turning torch's and transformers' failures into ``EngineError``."""
        try:
            return fn(*args)
        except (BackendError, Cancelled):
            raise
        except ConfigError as e:
            raise EngineError(f"{self.name}: {e}", backend=self.name) from None
        except (RuntimeError, ValueError, OSError, TypeError, KeyError, IndexError) as e:
            raise EngineError(f"{self.name}: {type(e).__name__}: {e}", backend=self.name) from None

    def _decode_one(
        self,
        messages: list[Message],
        params: SamplingParams,
        emit: Callable[[str], None] | None,
        cancelled: threading.Event,
    ) -> tuple[Generation, Usage, str | None]:
        runner = self._load()
        prompt, note = self._encode(runner, messages)
        detok = Detokenizer(runner.tokenizer, params.stop or ())
        text, steps, finish = [], runner.tokens(prompt, params), "length"
        for new in steps:
            if cancelled.is_set():
                raise Cancelled
            piece = detok.push(new)
            if piece:
                text.append(piece)
                if emit is not None:
                    emit(piece)
            if detok.stopped or new[-1] in runner.stop_ids:
                finish = "stop"
                break
        steps.close()
        rest = detok.finish()
        if rest:
            text.append(rest)
            if emit is not None:
                emit(rest)
        return Generation("".join(text), finish), Usage.of(len(prompt), len(detok.ids)), note

    def _generate(
        self, messages: list[Message], params: SamplingParams, n: int, cancelled: threading.Event
    ) -> GenerateResult:
        runner = self._load()
        sampled = params.temperature is None or params.temperature > 0
        if n == 1 or not sampled:
            generation, usage, note = self._decode_one(messages, params, None, cancelled)
            return GenerateResult([generation] * n, Usage.of(usage.prompt_tokens, usage.completion_tokens * n), note)
        prompt, note = self._encode(runner, messages)
        rows = runner.samples(prompt, params, n, cancelled.is_set)
        if cancelled.is_set():
            raise Cancelled
        generations = [self._finish(runner, row, params) for row in rows]
        return GenerateResult(generations, Usage.of(len(prompt), sum(map(len, rows))), note)

    @staticmethod
    def _finish(runner: Runner, row: list[int], params: SamplingParams) -> Generation:
        detok = Detokenizer(runner.tokenizer, params.stop or ())
        text = detok.push(row) + detok.finish()
        stopped = detok.stopped or row[-1] in runner.stop_ids
        return Generation(text, "stop" if stopped else "length")

    async def start(self) -> None:
        """Load the model (and its draft) now instead of on the first call."""
        await self._call(lambda cancelled: self._load())

    async def generate(
        self, messages: list[Message], params: SamplingParams, n: int = 1, *, model: str | None = None
    ) -> GenerateResult:
        self._check_model(model)
        self.fields.check(params, self.name)
        return await self._call(self._generate, messages, params, n)

    async def stream(
        self, messages: list[Message], params: SamplingParams, *, model: str | None = None
    ) -> AsyncIterator[Delta]:
        self._check_model(model)
        self.fields.check(params, self.name)
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()  # None: decoding ended (or failed)

        def emit(piece: str) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

        done = asyncio.ensure_future(self._call(self._decode_one, messages, params, emit))
        done.add_done_callback(lambda _: pieces.put_nowait(None))
        try:
            while (piece := await pieces.get()) is not None:
                yield Delta(content=piece)
            generation, usage, note = done.result()
            yield Delta(finish_reason=generation.finish_reason, usage=usage, template=note)
        finally:
            done.cancel()

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._runner = None


__all__ = ["TorchProposer"]
