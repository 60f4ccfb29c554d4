"""Embeddings without torch: the indexing model, exported to ONNX, run by ONNX Runtime.

Importing sentence-transformers (and with it torch and transformers) takes seconds and hundreds
of megabytes; a query needs one forward pass of a small model. So ``planvm index`` exports the
model it embedded with, once per machine, into a shared cache (``embedders/<model>-<hash>/``
under ``$PLANVM_HOME`` or the user data folder: ``model.onnx``, the fast tokenizer's
``tokenizer.json``, and ``embedder.json`` describing pooling and the window; the hash is of the
model's name and weights), and the knowledge base names its export (key and path) in ``KB/embedder.ref``.
Searching loads that with ``onnxruntime`` and ``tokenizers`` only. A knowledge base indexed
before the cache existed keeps its own ``KB/embedder/`` folder, which still loads. The pooling is the
model's own (mean over the tokens, then L2 normalisation), so the vectors equal the indexing
model's (cosine ≥ 0.9999, tested). Models that do not pool that way are not exported; their
knowledge bases embed queries with sentence-transformers, as before.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tools.kb.embedding import QueryEncoding

__all__ = ["EXPORT_FOLDER", "OnnxEmbedder", "cache_root", "embedder_for", "export_onnx", "load_exported", "onnx_session", "padded",
           "staged_folder"]

EXPORT_FOLDER = "embedder"  # a knowledge base's own export (before the shared cache)
REFERENCE_FILE = "embedder.ref"  # the name of the knowledge base's export in the shared cache
_FORMAT = "planvm-onnx-embedder/1"
log = logging.getLogger("planvm.kb")


def cache_root() -> Path:
    """The machine's shared folder of exported embedding models."""
    from vm.store.locations import planvm_home

    return planvm_home() / "embedders"


def _cache_key(embedder: Any) -> str:
    """``<model>-<hash>``: the hash covers the model's name and, for a model in a folder, its weights."""
    import hashlib
    import re

    from tools.kb.embedding import _resolve

    digest = hashlib.sha256(str(embedder.model_name).encode("utf-8"))
    try:
        folder = Path(_resolve(embedder.model_name))
    except Exception:  # noqa: BLE001 - a model that cannot be resolved here is keyed by its name
        folder = None
    if folder is not None and folder.is_dir():
        for weights in sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")]):
            with weights.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(embedder.model_name).rsplit("/", 1)[-1]).strip("-.")[:60] or "model"
    return f"{slug}-{digest.hexdigest()[:16]}"


def export_onnx(embedder: Any, kb: Path) -> bool:
    """Export ``embedder``'s model (a :class:`tools.kb.Embedder`) to the machine's shared cache,
    unless it is there already, and name it in ``kb/embedder.ref``. Returns whether an export is
    there afterwards; a model that cannot be exported is logged and left to sentence-transformers."""
    key = _cache_key(embedder)
    target = cache_root() / key
    described = _describe(target)
    if described is None or described.get("model") != embedder.model_name:
        if not _export(embedder, target):
            return False
    Path(kb).mkdir(parents=True, exist_ok=True)
    reference = Path(kb) / REFERENCE_FILE
    wanted = json.dumps({"key": key, "path": str(target.resolve())})
    if not reference.is_file() or reference.read_text(encoding="utf-8") != wanted:
        staged = Path(kb) / f"{REFERENCE_FILE}.{uuid.uuid4().hex[:8]}.tmp"
        staged.write_text(wanted, encoding="utf-8")
        os.replace(staged, reference)
    old = Path(kb) / EXPORT_FOLDER
    if old.is_dir():  # the knowledge base's own copy, from before the shared cache
        shutil.rmtree(old, ignore_errors=True)
    return True


def _export(embedder: Any, target: Path) -> bool:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        import torch

        model = embedder.model
        modules = [type(m).__name__ for m in model]
        pooling = model[1].get_config_dict().get("pooling_mode") if len(modules) > 1 else None
        if modules[:2] != ["Transformer", "Pooling"] or pooling != "mean" or modules[2:] not in ([], ["Normalize"]):
            log.info("the embedding model %s is not exported to ONNX (modules %s, pooling %s)", embedder.model_name, modules, pooling)
            return False
        inner = model[0].auto_model.eval()
        tokenizer = model.tokenizer
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in tokenizer.model_input_names else [])

        class Encoder(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *inputs: Any) -> Any:
                return self.inner(**dict(zip(names, inputs, strict=True))).last_hidden_state

        def usable(folder: Path) -> bool:
            described = _describe(folder)
            return described is not None and described.get("model") == embedder.model_name

        with staged_folder(target, usable) as staged:
            example = tuple(torch.ones((1, 8), dtype=torch.long) for _ in names)
            axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]}
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's notes on the model's Python code
                torch.onnx.export(
                    Encoder(), example, str(staged / "model.onnx"), input_names=names, output_names=["last_hidden_state"],
                    dynamic_axes=axes, opset_version=17, dynamo=False,
                )
            tokenizer.backend_tokenizer.save(str(staged / "tokenizer.json"))
            description = {
                "format": _FORMAT,
                "model": embedder.model_name,
                "dimension": embedder.dimension,
                "window": embedder.window,
                "inputs": names,
                "pad_id": tokenizer.pad_token_id or 0,
                "pad_token": tokenizer.pad_token or "[PAD]",
                "normalize": True,
            }
            (staged / "embedder.json").write_text(json.dumps(description), encoding="utf-8")  # last: marks it complete
    except Exception as exc:  # an exporter that fails leaves queries to sentence-transformers
        log.warning("could not export the embedding model to ONNX (%s: %s); queries will load sentence-transformers",
                    type(exc).__name__, str(exc)[:200])
        return False
    return True


@contextmanager
def staged_folder(target: Path, usable: Callable[[Path], bool]) -> Iterator[Path]:
    """A new folder beside ``target`` to write an export into; when the block ends, it replaces
    ``target`` in one rename (a ``target`` that is not ``usable``, such as one that stopped midway,
    is removed first; one that another process finished meanwhile is kept and the staged copy
    dropped). When the block fails, the staged folder is removed and ``target`` is untouched."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.parent / f"{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    staged.mkdir(parents=True)
    try:
        yield staged
        if target.exists() and not usable(target):
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(staged, target)
        except OSError:  # another process exported it at the same time
            if not usable(target):
                raise
            shutil.rmtree(staged, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def _describe(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / "embedder.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != _FORMAT or not (folder / "model.onnx").is_file():
        return None
    return data


def load_exported(kb: Path, model_name: str | None = None) -> OnnxEmbedder | None:
    """The knowledge base's exported embedder (for ``model_name``, when given): the shared export
    its ``embedder.ref`` names, else its own ``embedder/`` folder; None when there is none (or
    ONNX Runtime is not installed)."""
    folder = Path(kb) / EXPORT_FOLDER
    reference = Path(kb) / REFERENCE_FILE
    if reference.is_file():
        shared = None
        try:  # where it was exported, else the same name in this environment's cache
            named = json.loads(reference.read_text(encoding="utf-8"))
            shared = next((c for c in (Path(named["path"]), cache_root() / str(named["key"])) if _describe(c) is not None), None)
        except (OSError, ValueError, KeyError, TypeError):
            shared = None
        if shared is not None:
            folder = shared
        elif not folder.is_dir():
            log.info("the embedding model exported for %s is not in %s; queries will load sentence-transformers "
                     "(re-run `planvm index` to export it again)", kb, cache_root())
    description = _describe(folder)
    if description is None or (model_name is not None and description.get("model") != model_name):
        return None
    try:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError:
        return None
    key = (str(folder.resolve()), json.dumps(description, sort_keys=True))
    with _CACHE_LOCK:  # one session per export in a process: search and answers share it
        if key not in _CACHE:
            _CACHE[key] = OnnxEmbedder(folder, description)
        return _CACHE[key]


def embedder_for(kb: Path, model_name: str | None) -> Any:
    """The embedder for queries on the knowledge base ``kb``: its ONNX export when it has one
    (for ``model_name``, when given), else the sentence-transformers model (the default one when
    ``model_name`` is None)."""
    from tools.kb.embedding import Embedder

    return load_exported(kb, model_name) or Embedder(model_name)


_CACHE: dict[tuple[str, str], OnnxEmbedder] = {}
_CACHE_LOCK = threading.Lock()


def onnx_session(model: Path) -> Any:
    """An ONNX Runtime session on the CPU for a small model: a few threads, no arena kept around
    (a query's few tensors), its own log quiet."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = min(4, os.cpu_count() or 1)
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def padded(batch: list[Any], pad_id: int) -> dict[str, Any]:
    """A batch of ``tokenizers`` encodings as a BERT model's inputs: ``input_ids`` (padded with
    ``pad_id``), ``attention_mask`` and ``token_type_ids``, int64 ``[len(batch), longest]``."""
    import numpy as np

    width = max(len(e.ids) for e in batch)
    ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    types = np.zeros((len(batch), width), dtype=np.int64)
    for row, encoding in enumerate(batch):
        n = len(encoding.ids)
        ids[row, :n] = encoding.ids
        mask[row, :n] = 1
        types[row, :n] = encoding.type_ids
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


class OnnxEmbedder(QueryEncoding):
    """The same interface as :class:`tools.kb.Embedder`, on an exported model (thread-safe)."""

    def __init__(self, folder: Path, description: dict[str, Any], *, batch_size: int = 32) -> None:
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.model_name = str(description["model"])
        self.dimension = int(description["dimension"])
        self.window = int(description["window"])
        self.batch_size = batch_size
        self._inputs = list(description["inputs"])
        self._tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=self.window)  # special tokens kept, as the model had them
        self._tokenizer.no_padding()
        self._counter = Tokenizer.from_file(str(self.folder / "tokenizer.json"))  # untruncated, to count
        self._counter.no_truncation()
        self._counter.no_padding()
        self._session: Any = None
        self._lock = threading.Lock()
        self._pad_id = int(description["pad_id"])

    def _run(self, batch: list[Any]) -> Any:
        import numpy as np

        if self._session is None:
            self._session = onnx_session(self.folder / "model.onnx")
        feeds = padded(batch, self._pad_id)
        mask = feeds["attention_mask"]
        hidden = self._session.run(None, {name: feeds[name] for name in self._inputs})[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)

    def encode(self, texts: list[str]) -> Any:
        """float32 array ``[len(texts), dimension]``, rows L2-normalised (texts batched by length)."""
        import numpy as np

        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        with self._lock:
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                out[rows] = self._run([encodings[i] for i in rows])
        return out

    def token_count(self, text: str) -> int:
        return len(self._counter.encode(text).ids)
