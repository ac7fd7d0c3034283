"""In-process vLLM behind the proposer protocol, on CUDA or CPU.

One ``AsyncLLM`` engine per backend, shared by every agent and request that names the backend. The engine
starts on first use in a worker thread (the event loop keeps serving meanwhile; concurrent first callers
share one start). Each call:

    messages -> chat template (as vLLM's chat API applies it) -> prompt ids, length checked
             -> vLLM SamplingParams(n, ...) -> AsyncLLM.generate -> GenerateResult | Delta stream

``n`` samples are one vLLM request: its children share the prompt's KV blocks (prefix caching) instead of
prefilling ``n`` times. Cancelling the awaiting task closes vLLM's generator, which aborts the request.
An engine that died fails its requests with ``EngineError`` and is restarted by the next request, once:
if the restarted engine dies before it has served a request, it stays down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import replace
from typing import Any

from proposers import vllm_args  # first: it quiets vLLM's log before vLLM loads  # isort: skip

from vllm import SamplingParams as VLLMSamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.inputs.engine import tokens_input
from vllm.logprobs import SampleLogprobs
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

from moa.config import VLLMBackendConfig
from moa.errors import (
    BadRequestError,
    ContextLengthError,
    EngineError,
    MoaError,
    NotFoundError,
)
from moa.tools import ToolSpec, as_pieces
from moa.types import Delta, GenerateResult, Generation, Message, SamplingParams, TopLogprobs, Usage
from proposers.chat_template import TemplateRules, adapt
from proposers.embedded import resolve_model
from proposers.local_input import local_messages
from proposers.local_template import chat_template_text, probe_tokenizer
from proposers.main_module import MAIN_GUARD_HINT, importing_main_of_a_spawned_process, main_module_not_reimported
from proposers.vllm_tool_parser import AutoCalls, parser_class, parses
from proposers.vllm_tools import call_schema, calls_from, forced

logger = logging.getLogger(__name__)

_CONTEXT_HINTS = ("maximum model length", "max_model_len", "context length")
#: seconds the engine process gets to exit after SIGTERM before it is killed (and reaped). Past the requests it
#: aborts it only frees memory (a full garbage collection, then the interpreter's teardown: 3-10 s on 2 busy
#: cores) and holds nothing a kill loses; its sockets are the frontend's to remove.
_SHUTDOWN_GRACE_S = 1.0
#: seconds to wait for a killed engine process to be reaped
_REAP_S = 10.0


class VLLMProposer:
    """A vLLM engine in this process (its workers in child processes), made on first use."""

    supports_n = True

    def __init__(self, name: str, config: VLLMBackendConfig) -> None:
        self.name = name
        self.config = config
        self._engine: AsyncLLM | None = None
        self._starting: asyncio.Task[AsyncLLM] | None = None
        self._restarted = False  # the engine was restarted and the new one has not served a request yet
        self._chat_template = chat_template_text(config.chat_template, f"backends.{name}.chat_template")
        #: vLLM's tool parser reading the model's own calls under tool_choice auto (proposers.vllm_tool_parser)
        self._tool_parser = parser_class(config.tool_parser, name) if config.tool_parser is not None else None
        self.fields = config.field_support()  # every sampling field vLLM's SamplingParams takes
        self.template_rules: TemplateRules | None = None  # probed from the template on the engine's first prompt
        #: seconds of each start-up step of the last start (``conversion``, ``engine start``), for ``--trace``
        self.startup_s: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"VLLMProposer(name={self.name!r}, model={self.config.model!r})"

    @property
    def engine(self) -> AsyncLLM | None:
        """The running vLLM engine (``None`` before the first call), for vLLM's own API."""
        return self._engine

    @property
    def running_requests(self) -> int:
        """Requests the engine holds now (0 before it starts)."""
        return self._engine.get_num_unfinished_requests() if self._engine is not None else 0

    async def start(self) -> None:
        """Start the engine now instead of on the first call."""
        await self._ready()

    # ---- calls ---------------------------------------------------------------------------------------------

    async def generate(
        self, messages: list[Message], params: SamplingParams, n: int = 1, *, model: str | None = None
    ) -> GenerateResult:
        engine = await self._ready(model)
        prompt, note = self._prompt_ids(engine, messages, params.tools)  # prompt: [P]
        room = engine.model_config.max_model_len - len(prompt)
        parsers = [self._auto_calls(engine, params.tools) for _ in range(n)]  # parsers keep state: one a sample
        sampling = self.sampling_params(params, n, room, RequestOutputKind.FINAL_ONLY, auto=parsers[0])
        final = None
        with self._mapped_errors():
            async with aclosing(engine.generate(tokens_input(prompt), sampling, self._request_id())) as outputs:
                async for out in outputs:  # FINAL_ONLY: one output, all n samples done
                    final = out
        if final is None:
            raise EngineError(f"{self.name}: vLLM ended the request without an output", backend=self.name)
        self._restarted = False
        samples = sorted(final.outputs, key=lambda o: o.index)  # samples: [n]
        return GenerateResult(
            generations=[
                self._called(params, s.text)
                or _with_calls(
                    Generation(
                        text=s.text,
                        finish_reason=s.finish_reason,
                        logprobs=_top_logprobs(s.logprobs),
                        sampled=_sampled(s.token_ids, s.logprobs),
                    ),
                    parsers[s.index] if s.index < n else None,
                )
                for s in samples
            ],
            usage=Usage.of(len(prompt), sum(len(s.token_ids) for s in samples), _cached(final, len(prompt))),
            template=note,
            seed=sampling.seed,
        )

    async def stream(
        self, messages: list[Message], params: SamplingParams, *, model: str | None = None
    ) -> AsyncIterator[Delta]:
        engine = await self._ready(model)
        prompt, note = self._prompt_ids(engine, messages, params.tools)
        room = engine.model_config.max_model_len - len(prompt)
        auto = self._auto_calls(engine, params.tools)  # the model may call: its calls read as they come
        sampling = self.sampling_params(params, 1, room, RequestOutputKind.DELTA, auto=auto)
        completion_tokens, finish_reason, cached = 0, None, 0
        calling = forced(params.tools)  # the answer is a call: sent whole once it is complete JSON
        written: list[str] = []
        held = _HeldPositions()  # under auto: logprob positions until the parser gives their text out
        with self._mapped_errors():
            async with aclosing(engine.generate(tokens_input(prompt), sampling, self._request_id())) as outputs:
                async for out in outputs:
                    cached = max(cached, _cached(out, len(prompt)))
                    piece = out.outputs[0]  # the tokens decoded since the previous output
                    completion_tokens += len(piece.token_ids)
                    finish_reason = piece.finish_reason or finish_reason
                    if calling:  # no text, nor its logprobs, until the call is complete
                        written.append(piece.text)
                    elif auto is not None and (piece.text or piece.token_ids):
                        held.add(_sampled(piece.token_ids, piece.logprobs), _top_logprobs(piece.logprobs))
                        text, calls = auto.piece(piece.text, piece.token_ids)
                        if text or calls:  # text takes the positions held since the last; a call's are dropped
                            sampled, alternatives = held.take(keep=bool(text))
                            yield Delta(content=text, tool_calls=calls, sampled=sampled, logprobs=alternatives)
                    elif piece.text or piece.logprobs:
                        yield Delta(
                            content=piece.text,
                            sampled=_sampled(piece.token_ids, piece.logprobs) or (),
                            logprobs=_top_logprobs(piece.logprobs) or (),
                        )
        self._restarted = False
        called = self._called(params, "".join(written)) if calling else None
        if called is not None:
            yield Delta(tool_calls=as_pieces(called.tool_calls))
            finish_reason = "tool_calls"
        if auto is not None and auto.called:
            rest = auto.rest()
            if rest:
                yield Delta(tool_calls=rest)
            finish_reason = "length" if finish_reason == "length" else "tool_calls"  # a cut call says so, as vLLM
        elif auto is not None and (unsent := auto.unsent_text()):
            sampled, alternatives = held.take(keep=True)
            yield Delta(content=unsent, sampled=sampled, logprobs=alternatives)
        usage = Usage.of(len(prompt), completion_tokens, cached)
        yield Delta(finish_reason=finish_reason or "stop", usage=usage, template=note, seed=sampling.seed)

    # ---- one phase each ------------------------------------------------------------------------------------

    def _prompt_ids(
        self, engine: AsyncLLM, messages: list[Message], tools: ToolSpec | None = None
    ) -> tuple[list[int], str | None]:
        """Token ids of the conversation fitted to the chat template's rules plus the assistant's opening, the way
        vLLM's chat API renders it (the offered ``tools`` passed to the template, unless ``tool_choice`` is
        ``none``); and how the conversation was fitted (``None``: unchanged)."""
        tokenizer = engine.tokenizer
        if tokenizer is None:  # an engine started with skip_tokenizer_init, which moa's engine args never set
            raise EngineError(f"{self.name}: the vLLM engine has no tokenizer", backend=self.name)
        if self.template_rules is None:
            self.template_rules = probe_tokenizer(tokenizer, self._chat_template, self.name)
        multimodal = bool(engine.model_config.is_multimodal_model)
        messages, fitted = local_messages(self.name, self.config, messages, multimodal=multimodal)
        messages, note = adapt(messages, self.template_rules)
        note = "; ".join(n for n in (fitted, note) if n) or None
        template = self._chat_template
        offered = (
            [t.model_dump(exclude_none=True) for t in tools.tools] if tools and tools.tool_choice != "none" else None
        )
        try:
            ids = tokenizer.apply_chat_template(
                [_template_turn(m) for m in messages],
                tools=offered,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
                chat_template=template,
            )
        except Exception as e:  # a template may raise anything on a conversation it rejects
            raise BadRequestError(
                f"{self.name}: the chat template rejected the messages: {e}", backend=self.name
            ) from None
        if isinstance(ids, str):  # tokenize=True asks for token ids; text back would be sent as characters
            raise EngineError(f"{self.name}: the tokenizer's chat template gave text, not token ids", backend=self.name)
        limit = engine.model_config.max_model_len
        if len(ids) >= limit:
            raise ContextLengthError(
                f"{self.name}: the prompt is {len(ids)} tokens but the model's context (max_model_len) is {limit} "
                f"tokens, which must also hold at least one answer token; shorten the messages or raise "
                f"backends.{self.name}.max_model_len",
                backend=self.name,
            )
        return list(ids), note

    def sampling_params(
        self,
        params: SamplingParams,
        n: int,
        room: int,
        kind: RequestOutputKind = RequestOutputKind.FINAL_ONLY,
        *,
        auto: AutoCalls | None = None,
    ) -> VLLMSamplingParams:
        """vLLM's sampling params of one call: every field ``params`` sets under its own name (one vLLM does not
        take is refused, naming it); ``max_tokens`` capped to the ``room`` the prompt leaves in the context;
        special tokens kept in the text where the tool parser reading it (``auto``) asks for them."""
        chosen = self.fields.wire(params, self.name)
        if auto is not None and not auto.skip_special_tokens:
            chosen.setdefault("skip_special_tokens", False)
        if "logit_bias" in chosen:  # OpenAI keys token ids as strings, vLLM as ints
            chosen["logit_bias"] = {int(token): bias for token, bias in chosen["logit_bias"].items()}
        if "response_format" in chosen:  # OpenAI's field, enforced by vLLM's structured outputs (xgrammar)
            chosen["structured_outputs"] = structured_outputs(chosen.pop("response_format"))
        if params.tools is not None and forced(params.tools):  # the answer is the call (proposers.vllm_tools)
            chosen["structured_outputs"] = StructuredOutputsParams(json=call_schema(params.tools))
        if params.logprobs is not None:
            chosen["logprobs"] = params.logprobs
        if params.seed is None:  # a fresh seed: unseeded, every new engine would sample as its seed 0 says
            chosen["seed"] = secrets.randbelow(2**62)
        chosen["max_tokens"] = room if params.max_tokens is None else min(params.max_tokens, room)
        try:
            return VLLMSamplingParams(n=n, output_kind=kind, **chosen)
        except (VLLMValidationError, ValueError, TypeError) as e:
            raise BadRequestError(f"{self.name}: invalid sampling parameters: {e}", backend=self.name) from None

    def _auto_calls(self, engine: AsyncLLM, tools: ToolSpec | None) -> AutoCalls | None:
        """The parsing of one answer that may call a tool (``tool_choice`` auto); ``None`` when it may not."""
        if not parses(tools):
            return None
        assert tools is not None
        if self._tool_parser is None:
            raise BadRequestError(f"{self.name}: {self.config.tools_refusal(tools)}", backend=self.name, status=400)
        return AutoCalls.start(self._tool_parser, engine.tokenizer, tools, self.config.model)

    def _called(self, params: SamplingParams, text: str) -> Generation | None:
        """The answer as the call it was forced to be (``proposers.vllm_tools``); ``None`` when it was free."""
        if params.tools is None or not forced(params.tools):
            return None
        return Generation("", "tool_calls", tool_calls=calls_from(text, params.tools, self.name))

    def _request_id(self) -> str:
        return f"{self.name}-{uuid.uuid4().hex}"

    @contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        """vLLM's failures -> moa's tree, in one place."""
        try:
            yield
        except MoaError:
            raise
        except EngineDeadError:
            raise EngineError(
                f"{self.name}: the vLLM engine died (its log is above); the next request restarts it",
                backend=self.name,
            ) from None
        except (VLLMValidationError, ValueError) as e:
            cls = ContextLengthError if any(h in str(e).lower() for h in _CONTEXT_HINTS) else BadRequestError
            raise cls(f"{self.name}: vLLM rejected the request: {e}", backend=self.name) from None
        except EngineGenerateError as e:
            cause = e.__cause__ or e
            raise EngineError(
                f"{self.name}: vLLM failed the request: {type(cause).__name__}: {cause}", backend=self.name
            ) from None

    # ---- engine lifecycle ----------------------------------------------------------------------------------

    async def _ready(self, model: str | None = None) -> AsyncLLM:
        """The running engine, starting (or restarting, once) it first when needed."""
        if model is not None and model != self.config.model:
            raise NotFoundError(
                f"{self.name}: this vLLM backend serves {self.config.model!r}, not {model!r}", backend=self.name
            )
        engine = self._engine
        if engine is not None and not engine.errored:
            return engine
        if self._starting is None:
            if engine is not None:  # it died
                if self._restarted:
                    raise EngineError(
                        f"{self.name}: the vLLM engine died again before serving a request after its restart; "
                        "not restarting it (close the ensemble to try again)",
                        backend=self.name,
                    )
                self._restarted = True
                self._engine = None
                logger.warning("the vLLM engine for backend %r died; restarting it", self.name)
            self._starting = asyncio.get_running_loop().create_task(self._start(dead=engine))
        # shielded: a caller cancelled mid-start leaves the start running, for the next caller or aclose
        return await asyncio.shield(self._starting)

    async def _start(self, dead: AsyncLLM | None) -> AsyncLLM:
        try:
            if dead is not None:
                await asyncio.to_thread(_shut_down, dead)
            self._engine = await asyncio.to_thread(self._build_engine)
            return self._engine
        finally:
            self._starting = None

    def _build_engine(self) -> AsyncLLM:
        """Runs in a worker thread: resolves the model (converting an embedded one) and starts vLLM."""
        if importing_main_of_a_spawned_process():
            raise EngineError(f"{self.name}: {MAIN_GUARD_HINT}", backend=self.name)
        began = time.perf_counter()
        path = resolve_model(self.config.model, field=f"backends.{self.name}.model")
        self.startup_s = {"conversion check": time.perf_counter() - began}
        args = vllm_args.engine_args(self.name, self.config, path)
        logger.info(
            "starting vLLM engine for backend %r (%s) on %s (~20-35 s on 2 CPU cores)",
            self.name,
            self.config.model,
            vllm_args.vllm_device(),
        )
        started = time.perf_counter()
        vllm_args.cpu_engine_environment()
        try:
            with main_module_not_reimported():  # a script needs no __main__ guard (proposers/main_module.py)
                engine = AsyncLLM.from_engine_args(args)
        except Exception as e:
            raise EngineError(
                f"{self.name}: vLLM could not start {self.config.model}: {type(e).__name__}: {e}", backend=self.name
            ) from e
        self.startup_s["engine start"] = time.perf_counter() - started
        logger.info("vLLM engine for backend %r ready in %.0f s", self.name, self.startup_s["engine start"])
        return engine

    async def aclose(self) -> None:
        """Shut the engine and its processes down (waiting for a start in progress first). Safe to call twice."""
        if self._starting is not None:
            await asyncio.wait([self._starting])
        engine, self._engine, self._restarted = self._engine, None, False
        if engine is None:
            return
        handler = engine.output_handler
        if handler is not None and engine.get_num_unfinished_requests() == 0:
            # idle: stop reading outputs first, else it reports the engine's exit below as a crash. (With
            # requests in flight it stays, so that they fail with EngineError instead of waiting forever.)
            handler.cancel()
            await asyncio.wait([handler])
        await asyncio.to_thread(_shut_down, engine)


def _shut_down(engine: AsyncLLM) -> None:
    """vLLM's shutdown (SIGTERM, ``_SHUTDOWN_GRACE_S`` to exit, then SIGKILL), then reap what it killed: vLLM
    leaves a killed engine process unreaped (a zombie until this process exits)."""
    engine.shutdown(_SHUTDOWN_GRACE_S)
    manager = getattr(getattr(engine.engine_core, "resources", None), "engine_manager", None)
    for process in getattr(manager, "processes", ()):
        process.join(_REAP_S)


def structured_outputs(response_format: dict[str, Any]) -> StructuredOutputsParams:
    """vLLM's structured outputs for OpenAI's ``response_format`` (as the wire writes it), as vLLM's own server
    maps it: ``json_object`` any JSON object, ``json_schema`` its schema."""
    if response_format["type"] == "json_schema":
        return StructuredOutputsParams(json=response_format["json_schema"]["schema"])
    return StructuredOutputsParams(json_object=True)


class _HeldPositions:
    """Logprob positions of streamed pieces the tool parser has not given out as text yet."""

    def __init__(self) -> None:
        self.sampled: list[tuple[str, float]] = []
        self.alternatives: list[TopLogprobs] = []

    def add(self, sampled: tuple[tuple[str, float], ...] | None, alternatives: tuple[TopLogprobs, ...] | None) -> None:
        self.sampled += sampled or ()
        self.alternatives += alternatives or ()

    def take(self, *, keep: bool) -> tuple[tuple[tuple[str, float], ...], tuple[TopLogprobs, ...]]:
        """The held positions (``keep``), or none (they were a call's), and nothing held after."""
        out = (tuple(self.sampled), tuple(self.alternatives)) if keep else ((), ())
        self.sampled, self.alternatives = [], []
        return out


def _template_turn(message: Message) -> dict[str, Any]:
    """A turn as chat templates read it: as on OpenAI's wire, but a tool call's arguments as the object they
    encode (what tool-aware templates expect, as vLLM's chat API hands them)."""
    turn = message.to_dict()
    for call in turn.get("tool_calls") or ():
        arguments = call["function"]["arguments"]
        try:
            parsed = json.loads(arguments)
        except (ValueError, RecursionError):
            continue  # not JSON: the template gets the text as written
        if isinstance(parsed, dict):  # arguments are an object; anything else stays text
            call["function"]["arguments"] = parsed
    return turn


def _with_calls(generation: Generation, auto: AutoCalls | None) -> Generation:
    """``generation`` with the calls the tool parser read in its text (``auto``), which then holds the rest."""
    if auto is None:
        return generation
    parsed = auto.whole(generation.text)
    if not parsed.calls:
        return generation
    return replace(generation, text=parsed.text, finish_reason="tool_calls", tool_calls=parsed.calls)


def _top_logprobs(positions: SampleLogprobs | None) -> tuple[TopLogprobs, ...] | None:
    """vLLM's {token id: Logprob} per generated position as (token, logprob), most likely first; like OpenAI's
    API it holds the top ``logprobs`` tokens plus the sampled one where that ranks lower."""
    if positions is None:
        return None
    return tuple(
        tuple(sorted(((lp.decoded_token or "", lp.logprob) for lp in (top or {}).values()), key=lambda t: -t[1]))
        for top in positions
    )


def _sampled(token_ids: Sequence[int], positions: SampleLogprobs | None) -> tuple[tuple[str, float], ...] | None:
    """The sampled token of each position (vLLM always includes it in the position's logprobs) and its logprob."""
    if positions is None:
        return None
    out = []
    for token_id, top in zip(token_ids, positions, strict=False):
        chosen = (top or {}).get(token_id)
        out.append(
            (chosen.decoded_token or "", chosen.logprob) if chosen is not None else ("", -9999.0)
        )  # as OpenAI writes "unlikely"
    return tuple(out)


__all__ = ["VLLMProposer"]


def _cached(output: object, prompt_tokens: int) -> int:
    """The prompt tokens vLLM found in its prefix cache for one request (``RequestOutput.num_cached_tokens``)."""
    cached = getattr(output, "num_cached_tokens", None)
    return min(cached, prompt_tokens) if isinstance(cached, int) and cached > 0 else 0
