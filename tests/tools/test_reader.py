"""The answer reader: a cross-encoder adapter shipped small, exported to ONNX once per machine,
run without torch, and combined with the answer model; the answer is a passage with the rest of
its section."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tools.kb import reader as reader_module
from tools.kb.evidence import AnswerModel, Passage, answer_probabilities, featurize, passages_of
from tools.kb.onnx_embedding import load_exported
from tools.llm_extractive import NOT_FOUND, ExtractiveBackend

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "How long does TiKV take to scale in or out?"
ANSWERS = "Scaling\nTiKV components usually take 3 to 5 minutes to scale in or out, because data is moved between stores."
UNRELATED = "Backup\nA backup is written to an S3-compatible bucket that the Backup custom resource names."


def test_the_adapter_is_small_and_names_no_local_path():
    files = {p.name: p.stat().st_size for p in reader_module.READER_FOLDER.iterdir()}
    assert set(files) == {"adapter_config.json", "adapter_model.safetensors", "reader.json"}
    assert sum(files.values()) < 4 * 1024 * 1024
    config = json.loads((reader_module.READER_FOLDER / "adapter_config.json").read_text())
    assert not str(config["base_model_name_or_path"]).startswith("/")


def test_the_reader_reads_question_and_passage_together():
    reader = reader_module.load_reader()
    assert reader is not None
    high, low = reader.scores(QUESTION, [ANSWERS, UNRELATED])
    assert high > 0.5 > low
    assert reader.scores(QUESTION, []).shape == (0,)


def test_a_question_longer_than_the_window_is_read_in_part_not_refused():
    """The tokenizer used to refuse a question longer than the reader's 192 tokens (it cut only the
    passage), which failed the whole answer."""
    long_question = "Why does my cluster keep failing " * 80 + "when TiKV scales in or out?"
    scores = reader_module.load_reader().scores(long_question, [ANSWERS, UNRELATED])
    assert scores.shape == (2,) and np.isfinite(scores).all()
    answer, found = ExtractiveBackend().extract_found(f"Goal: {long_question}", [
        {"content": ANSWERS.split("\n", 1)[1], "source_uri": "scale.md", "heading": "Scaling", "score": 0.8}])
    assert isinstance(answer, str) and answer  # an answer or "not found", never an error


def test_the_export_scores_as_the_merged_model_does():
    torch = pytest.importorskip("torch")
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tools.kb.embedding import _resolve

    base = _resolve(json.loads((reader_module.READER_FOLDER / "reader.json").read_text())["base_model"])
    model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, num_labels=1),
                                      str(reader_module.READER_FOLDER)).merge_and_unload().eval()
    tokenizer = AutoTokenizer.from_pretrained(base)
    passages = [ANSWERS, UNRELATED, "Short."]
    encoded = tokenizer([QUESTION] * 3, passages, truncation="only_second", max_length=192, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = torch.sigmoid(model(**encoded).logits.reshape(-1)).numpy()
    assert np.allclose(reader_module.load_reader().scores(QUESTION, passages), expected, atol=1e-4)


def test_answering_with_an_exported_reader_imports_no_torch():
    reader_module.load_reader()  # the export exists in this session's shared folder
    code = ("import sys; from tools.kb.reader import load_reader; r = load_reader(); "
            "print(r is not None, float(r.scores('q?', ['a passage'])[0]) >= 0, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, env=os.environ)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "False"]


def test_an_export_that_stopped_midway_is_built_again(tmp_path, monkeypatch):
    monkeypatch.setattr(reader_module, "_cache_root", lambda: tmp_path / "readers")
    monkeypatch.setattr(reader_module, "_LOADED", {})
    target = tmp_path / "readers" / reader_module._key()
    target.mkdir(parents=True)
    (target / "model.onnx").write_bytes(b"half written")  # no export.json: it never finished
    with pytest.raises(FileNotFoundError, match="no complete reader export"):
        reader_module.Reader(target)
    reader = reader_module.load_reader()
    assert reader is not None and (target / "export.json").is_file()
    assert reader.scores(QUESTION, [ANSWERS])[0] > 0.5
    assert [p.name for p in (tmp_path / "readers").iterdir()] == [target.name]  # nothing staged is left behind


def test_an_export_damaged_on_disk_is_built_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(reader_module, "_cache_root", lambda: tmp_path / "readers")
    monkeypatch.setattr(reader_module, "_LOADED", {})
    target = reader_module.build_reader(target=tmp_path / "readers" / reader_module._key())
    (target / "model.onnx").write_bytes(b"not an ONNX model")  # complete by its files, broken by its bytes
    with caplog.at_level(logging.WARNING, logger="planvm.kb"):
        reader = reader_module.load_reader()
    assert "does not load" in caplog.text and "building it again" in caplog.text
    assert reader is not None and reader.scores(QUESTION, [ANSWERS])[0] > 0.5


def test_without_a_reader_the_answer_model_decides_alone(monkeypatch, caplog):
    def cannot(*args, **kwargs):
        raise ImportError("No module named 'peft'")

    monkeypatch.setattr(reader_module, "_LOADED", {})
    monkeypatch.setattr(reader_module, "_cache_root", lambda: Path("/nonexistent-readers"))
    monkeypatch.setattr(reader_module, "build_reader", cannot)
    with caplog.at_level(logging.WARNING, logger="planvm.kb"):
        assert reader_module.load_reader() is None
    assert "the answer reader is not used (ImportError: No module named 'peft'); install planvm[kb]" in caplog.text
    passages = [Passage(ANSWERS.split("\n", 1)[1], "scale.md", "Scaling", 0, 0.8)]
    from tools.kb.embedding import Embedder

    embedder = Embedder()
    p, threshold = answer_probabilities(QUESTION, passages, embedder)
    model = AnswerModel()
    assert threshold == model.threshold
    assert np.allclose(p, model.probability(featurize(QUESTION, passages, embedder)))


def test_with_the_reader_the_probability_is_a_weighted_mean_of_both(example_kb):
    embedder = load_exported(example_kb)
    passages = [Passage(ANSWERS.split("\n", 1)[1], "scale.md", "Scaling", 0, 0.8),
                Passage(UNRELATED.split("\n", 1)[1], "backup.md", "Backup", 1, 0.5)]
    reader = reader_module.load_reader()
    p, threshold = answer_probabilities(QUESTION, passages, embedder)
    model = AnswerModel()
    alone = model.probability(featurize(QUESTION, passages, embedder))
    read = reader.scores(QUESTION, [reader_module.passage_text(x.heading, x.text) for x in passages])
    assert threshold == model.reader_threshold
    w = model.reader_weight
    assert 0 < w < 1
    assert np.allclose(p, alone ** (1 - w) * read**w, atol=1e-6)


def test_the_answer_is_the_passage_and_the_rest_of_its_section_cited_once():
    """A section that states a problem in one passage and solves it in the next answers with both."""
    context = [
        {"content": "You may see the following error when applying the CRDs: `metadata.annotations: Too long`.",
         "source_uri": "troubleshooting.md", "heading": "Troubleshooting > Too long annotations", "score": 0.8},
        {"content": "Apply them with server-side apply instead: `kubectl apply --server-side -f crds/`.",
         "source_uri": "troubleshooting.md", "heading": "Troubleshooting > Too long annotations", "score": 0.6},
        {"content": "Sharding splits targets between several Prometheus servers by the hash of a label.",
         "source_uri": "sharding.md", "heading": "Sharding", "score": 0.3},
    ]
    answer, found = ExtractiveBackend().extract_found("Goal: How do I fix 'metadata.annotations: Too long' when applying the CRDs?", context)
    assert found, answer
    assert "--server-side" in answer and "following error" in answer
    assert answer.count("[troubleshooting.md > Too long annotations]") == 1 and answer.endswith("[troubleshooting.md > Too long annotations]")
    assert "sharding.md" not in answer and "hash of a label" not in answer
    answer, found = ExtractiveBackend().extract_found("Goal: How do I deploy the operator on OpenShift?", context)
    assert not found and answer == NOT_FOUND


def test_a_subsection_under_the_answering_section_is_part_of_the_answer():
    """A problem stated in a section, its fix under a heading of its own below it: one answer."""
    context = [
        {"content": "Targets are all down: the kubelet metrics server returned HTTP status `403 Forbidden`.",
         "source_uri": "troubleshooting.md", "heading": "Troubleshooting > Kubelet returned 403 Forbidden", "score": 0.8},
        {"content": "Amend the webhooks to listen on `0.0.0.0` instead of `127.0.0.1`, then restart the kubelet.",
         "source_uri": "troubleshooting.md", "heading": "Troubleshooting > Kubelet returned 403 Forbidden > Did you check the webhooks?",
         "score": 0.6},
        {"content": "A sibling section about another error entirely: the remote write queue is full.",
         "source_uri": "troubleshooting.md", "heading": "Troubleshooting > Remote write queue full", "score": 0.5},
    ]
    answer, found = ExtractiveBackend().extract_found("Goal: What should I do when the kubelet targets return 403 Forbidden?", context)
    assert found, answer
    assert "403 Forbidden" in answer and "0.0.0.0" in answer and "queue is full" not in answer
    assert answer.endswith("[troubleshooting.md > Kubelet returned 403 Forbidden]")
    # The subsection's passage retrieved first: the answer still names the section of the passage that answers.
    answer, found = ExtractiveBackend().extract_found("Goal: What should I do when the kubelet targets return 403 Forbidden?",
                                                      [context[1], context[0], context[2]])
    assert found and "0.0.0.0" in answer and "403 Forbidden" in answer, answer
    assert answer.count("[") == 1 and answer.endswith("[troubleshooting.md > Kubelet returned 403 Forbidden]"), answer


def test_a_heading_written_with_inline_code_names_its_passages_as_the_index_names_its_section():
    """The heading line inside a chunk (`Too long` in backticks) and the section heading the index
    wrote (plain) are one section, not two."""
    passages = passages_of([{"content": "## CRD apply fails with `Too long` issue\n\nUse server-side apply.",
                             "source_uri": "t.md", "heading": "Troubleshooting > CRD apply fails with Too long issue"},
                            {"content": "It needs Kubernetes v1.22 at least.", "source_uri": "t.md",
                             "heading": "Troubleshooting > CRD apply fails with Too long issue"}])
    assert [p.heading for p in passages] == ["Troubleshooting > CRD apply fails with Too long issue"] * 2


def test_retraining_the_answer_model_keeps_the_reader_weight_chosen_on_calibration(tmp_path):
    from training.answer_model import write_model

    path = tmp_path / "answer_model.json"
    path.write_text(json.dumps({"weights": [1.0], "reader_weight": 0.25, "reader_weight_from": "calibration: ..."}))
    write_model({"weights": [2.0], "threshold": 0.8}, path)
    written = json.loads(path.read_text())
    assert written == {"weights": [2.0], "threshold": 0.8, "reader_weight": 0.25, "reader_weight_from": "calibration: ..."}
    fresh = tmp_path / "fresh.json"
    write_model({"weights": [3.0]}, fresh)  # nothing chosen yet: nothing invented
    assert json.loads(fresh.read_text()) == {"weights": [3.0]}
