"""The reader: a small cross-encoder that reads a question and a passage together.

The embedding similarity and word overlaps of :mod:`tools.kb.evidence` look at the question and the
passage apart; the reader reads them as one text and says how likely the passage answers the
question. It is the bundled all-MiniLM-L6-v2 with a LoRA adapter and a classification head
(``tools/kb/reader/``, about 2 MB), learnt by ``python -m training.reader`` from questions
generated from documents no evaluation uses.

Answering needs no torch: the first use on a machine merges the adapter into the base model and
exports the result to ONNX in the machine's shared cache (``readers/<name>-<hash>/`` beside the
exported embedders), once; every later use, in any process, loads that export with ONNX Runtime.
When the reader cannot be built (no torch, transformers or peft to export it, no ONNX Runtime to
run it), :func:`load_reader` returns None and the answer model goes on without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import warnings
from pathlib import Path
from typing import Any

__all__ = ["READER_FOLDER", "Reader", "build_reader", "load_reader", "passage_text", "prepare_reader"]

READER_FOLDER = Path(__file__).with_name("reader")  # adapter_config.json, adapter_model.safetensors, reader.json
_FORMAT = "planvm-onnx-reader/1"
log = logging.getLogger("planvm.kb")
_LOCK = threading.Lock()
_LOADED: dict[str, Reader | None] = {}


def passage_text(heading: str, text: str) -> str:
    """What the reader reads of a passage: its heading, then its text."""
    return f"{heading}\n{text}" if heading else text


def _settings(folder: Path = READER_FOLDER) -> dict[str, Any]:
    return json.loads((folder / "reader.json").read_text(encoding="utf-8"))


def _key(folder: Path = READER_FOLDER) -> str:
    """``<name>-<hash of the adapter's files>``: a new adapter gets a new export."""
    digest = hashlib.sha256()
    for name in ("reader.json", "adapter_config.json", "adapter_model.safetensors"):
        digest.update((folder / name).read_bytes())
    return f"minilm-reader-{digest.hexdigest()[:16]}"


def _cache_root() -> Path:
    from tools.kb.onnx_embedding import cache_root

    return cache_root().parent / "readers"


def _complete(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / "export.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != _FORMAT or not (folder / "model.onnx").is_file():
        return None
    return data


def build_reader(adapter: Path = READER_FOLDER, target: Path | None = None) -> Path:
    """Merge the adapter into the base model and export it to ONNX in ``target`` (default: the
    shared cache); returns the export's folder. Needs torch, transformers and peft."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tools.kb.embedding import _resolve
    from tools.kb.onnx_embedding import staged_folder

    settings = _settings(adapter)
    target = target or _cache_root() / _key(adapter)
    if _complete(target) is not None:
        return target
    from transformers.utils import logging as hf_logging

    base_path = _resolve(settings["base_model"])
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # its report of the head the adapter supplies is no news
    hf_logging.disable_progress_bar()
    try:
        base = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1)
        model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().eval()
        tokenizer = AutoTokenizer.from_pretrained(base_path)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    names = ["input_ids", "attention_mask", "token_type_ids"]

    class Scorer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits[:, 0]

    with staged_folder(target, lambda folder: _complete(folder) is not None) as staged:
        example = tuple(torch.ones((2, 8), dtype=torch.long) for _ in names)
        axes = {name: {0: "batch", 1: "tokens"} for name in names} | {"logit": {0: "batch"}}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on the model's Python code
            torch.onnx.export(Scorer(), example, str(staged / "model.onnx"), input_names=names, output_names=["logit"],
                              dynamic_axes=axes, opset_version=17, dynamo=False)
        tokenizer.backend_tokenizer.save(str(staged / "tokenizer.json"))
        export = {"format": _FORMAT, "max_length": int(settings["max_length"]), "pad_id": tokenizer.pad_token_id or 0}
        (staged / "export.json").write_text(json.dumps(export), encoding="utf-8")  # last: marks it complete
    return target


def prepare_reader() -> Path | None:
    """The folder of the reader's export, built there first when it is not complete (once per
    machine); None, with a warning, when it cannot be built here."""
    folder = _cache_root() / _key()
    try:
        if _complete(folder) is None:
            build_reader(READER_FOLDER, folder)
    except Exception as exc:  # noqa: BLE001 - answers go on without the reader
        log.warning("the answer reader is not used (%s: %s); install planvm[kb] to build it", type(exc).__name__, str(exc)[:200])
        return None
    return folder


def load_reader() -> Reader | None:
    """The reader (built on first use, loaded once per process), or None when it cannot be built
    or run here."""
    key = str(READER_FOLDER)
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = _open_reader()
        return _LOADED[key]


def _open_reader() -> Reader | None:
    try:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as exc:
        log.warning("the answer reader is not used (%s); install planvm[kb] to run it", exc)
        return None
    for attempt in (1, 2):
        folder = prepare_reader()
        if folder is None:
            return None
        try:
            reader = Reader(folder)
            reader.open()
            return reader
        except Exception as exc:  # noqa: BLE001 - an export damaged on disk is built again, once
            if attempt == 2:
                log.warning("the answer reader is not used (%s: %s)", type(exc).__name__, str(exc)[:200])
                return None
            log.warning("the answer reader's export in %s does not load (%s: %s); building it again",
                        folder, type(exc).__name__, str(exc)[:200])
            shutil.rmtree(folder, ignore_errors=True)
    return None


class Reader:
    """Scores (question, passage) pairs with the exported cross-encoder (thread-safe)."""

    def __init__(self, folder: Path, *, batch_size: int = 16) -> None:
        from tokenizers import Tokenizer

        export = _complete(folder)
        if export is None:
            raise FileNotFoundError(f"{folder} holds no complete reader export")
        self.folder = folder
        self.batch_size = batch_size
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # the longer of question and passage is cut first: a question longer than the window is read in part, not refused
        self._tokenizer.enable_truncation(max_length=int(export["max_length"]), strategy="longest_first")
        self._tokenizer.no_padding()
        self._pad_id = int(export["pad_id"])
        self._session: Any = None
        self._lock = threading.Lock()

    def open(self) -> None:
        """Load the ONNX model (once); raises when the export does not load."""
        from tools.kb.onnx_embedding import onnx_session

        with self._lock:
            if self._session is None:
                self._session = onnx_session(self.folder / "model.onnx")

    def scores(self, question: str, passages: list[str]) -> Any:
        """float32 array: for each passage, the probability that it answers ``question``."""
        import numpy as np

        from tools.kb.onnx_embedding import padded

        out = np.zeros(len(passages), dtype=np.float32)
        if not passages:
            return out
        encodings = self._tokenizer.encode_batch([(question, p) for p in passages])
        self.open()
        with self._lock:
            for start in range(0, len(encodings), self.batch_size):
                batch = encodings[start : start + self.batch_size]
                logits = self._session.run(None, padded(batch, self._pad_id))[0]
                out[start : start + len(batch)] = 1.0 / (1.0 + np.exp(-logits.reshape(-1)))
        return out
