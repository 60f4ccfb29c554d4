"""Training on CPU with a tiny Qwen2 and a tokenizer trained here (no downloads): data, config,
LoRA SFT, reload, generation, evaluation with constrained decoding, merging, data generation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import EXAMPLES, ROOT, ScriptedLLM

from training import DatasetError, TrainConfig, load_rows, normalise_plan

TRAIN = EXAMPLES / "train" / "train.jsonl"
HELD = EXAMPLES / "train" / "held_out.jsonl"


# --- data -------------------------------------------------------------------------------------------------


def test_example_dataset():
    rows = load_rows(TRAIN, strict=True).rows
    assert len(rows) >= 40 and len(load_rows(HELD).rows) >= 5
    assert sum(any(s["type"] == "jmp" for s in r.plan) for r in rows) >= 5
    for row in rows:
        assert [s["seq_no"] for s in row.plan] == list(range(len(row.plan)))
        assert row.plan[0]["type"] != "reasoning" and isinstance(row.metadata, dict)


def test_normalise_plan_rewrites_jump_targets():
    plan = [
        {"seq_no": 1, "type": "reasoning", "parameters": {"chain_of_thoughts": "x"}},
        {"seq_no": 3, "type": "assign", "parameters": {"a": 1}},
        {"seq_no": 5, "type": "jmp", "parameters": {"condition_prompt": "?", "jump_if_true": 9, "jump_if_false": 7}},
        {"seq_no": 7, "type": "assign", "parameters": {"final_answer": "no"}},
        {"seq_no": 9, "type": "assign", "parameters": {"final_answer": "yes"}},
    ]
    out = normalise_plan(plan)
    assert [s["seq_no"] for s in out] == [0, 1, 2, 3]
    assert out[1]["parameters"] == {"condition_prompt": "?", "jump_if_true": 3, "jump_if_false": 2}


def test_bad_rows_are_dropped_and_reported(tmp_path, caplog):
    good = json.loads(TRAIN.read_text().splitlines()[0])
    rows = [
        good,
        {**good, "task_id": "no-goal", "goal": ""},
        {**good, "task_id": "not-json", "best_plan": "[{broken"},
        {**good, "task_id": "invalid", "best_plan": [{"seq_no": 0, "type": "assign", "parameters": {"x": 1}}]},
        {"task_id": "alias", "goal": "g", "reasoning": "r", "plan": good["best_plan"]},
    ]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    report = load_rows(path)
    assert [r.task_id for r in report.rows] == [good["task_id"], "alias"]
    reasons = dict(report.dropped)
    assert reasons["no-goal"] == "missing goal"
    assert "not a plan" in reasons["not-json"] and "final_answer" in reasons["invalid"]
    with pytest.raises(DatasetError, match="no-goal: missing goal"):
        load_rows(path, strict=True)


def test_datasets_folder_and_bad_sources(tmp_path):
    import datasets

    rows = [json.loads(line) for line in TRAIN.read_text().splitlines()[:3]]
    datasets.Dataset.from_list([{**r, "best_plan": json.dumps(r["best_plan"]) if not isinstance(r["best_plan"], str) else r["best_plan"], "metadata": json.dumps(r["metadata"]) if not isinstance(r["metadata"], str) else r["metadata"]} for r in rows]).save_to_disk(tmp_path / "ds")
    assert len(load_rows(tmp_path / "ds").rows) == 3
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DatasetError, match="no usable rows"):
        load_rows(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"goal": 1}\nnot json\n')
    with pytest.raises(DatasetError, match="line 2: not JSON"):
        load_rows(tmp_path / "bad.jsonl")
    with pytest.raises(DatasetError, match="cannot load it"):
        load_rows(tmp_path / "missing-dataset-name")


# --- config -------------------------------------------------------------------------------------------------


def test_config_from_toml_yaml_and_flags(tmp_path):
    (tmp_path / "c.toml").write_text('base_model = "/m"\nlora_r = 8\n')
    (tmp_path / "c.yaml").write_text("base_model: /m\nlearning_rate: 0.001\n")
    config = TrainConfig.from_file(tmp_path / "c.toml", lora_r=4, output_dir=None)
    assert (config.lora_r, config.lora_alpha, config.weight_decay, config.seed) == (4, 16, 0.1, 3407)
    assert TrainConfig.from_file(tmp_path / "c.yaml").learning_rate == 0.001
    assert TrainConfig.from_file(EXAMPLES / "train" / "train.toml").target_modules[-1] == "down_proj"
    with pytest.raises(ValueError, match="lora_r: Input should be greater than 0"):
        TrainConfig.build(lora_r=0)
    with pytest.raises(ValueError, match="unknown_field"):
        TrainConfig.build(unknown_field=1)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"load_in_4bit": True}, "load_in_4bit needs a CUDA GPU"),
        ({"optim": "adamw_8bit"}, "optim=adamw_8bit needs a CUDA GPU"),
        ({"backend": "unsloth"}, "backend=unsloth needs a CUDA GPU"),
        ({"base_model": "/no/such/model"}, "is not a model folder"),
    ],
)
def test_clear_errors_before_training(values, message):
    from training.sft import train

    with pytest.raises(ValueError, match=message):
        train(TrainConfig.build(**{"base_model": str(ROOT), **values}))


def test_accelerate_config_is_accepted():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(EXAMPLES / "train" / "accelerate.yaml"))
    assert config.num_processes == 2 and str(config.distributed_type).endswith("MULTI_GPU")


# --- training, reloading, evaluating, merging -----------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    from training.sft import train

    out = tmp_path_factory.mktemp("adapter")
    config = TrainConfig.build(
        base_model=str(tiny), output_dir=str(out), max_steps=12, per_device_train_batch_size=2,
        gradient_accumulation_steps=1, learning_rate=1e-2, warmup_steps=1, max_length=6000,
        lora_r=8, lora_alpha=16, eval_steps=6, merge=True,
    )
    return train(config)


def test_training_lowers_the_loss_and_changes_the_lora_weights(trained):
    import torch
    from safetensors.torch import load_file

    metrics = trained.metrics
    losses = [h["loss"] for h in metrics["history"] if "loss" in h]
    assert metrics["backend"] == "hf" and metrics["device"] == "cpu" and metrics["steps"] == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # the loss went down
    weights = load_file(str(trained.output_dir / "adapter_model.safetensors"))
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and any(torch.count_nonzero(w) > 0 for w in lora_b)  # lora_B starts at zero
    for name in ("adapter_config.json", "training_config.json", "metrics.json", "loss.png", "tokenizer.json"):
        assert (trained.output_dir / name).is_file(), name
    assert json.loads((trained.output_dir / "training_config.json").read_text())["lora_r"] == 8
    assert (trained.output_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_reload_onto_a_fresh_base_and_generate(trained, tiny):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tools.llm_local import LocalChat

    base = AutoModelForCausalLM.from_pretrained(tiny)
    model = PeftModel.from_pretrained(base, trained.output_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, AutoModelForCausalLM.from_pretrained(tiny)(ids).logits)
    reply = LocalChat(str(tiny), adapter=str(trained.output_dir), max_new_tokens=12).complete("What is planvm?")
    assert isinstance(reply.text, str)
    merged = AutoModelForCausalLM.from_pretrained(trained.output_dir / "merged")
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, model(ids).logits, atol=1e-4)


def test_planvm_eval_with_constrained_decoding(trained, tmp_path):
    held = tmp_path / "held.jsonl"
    held.write_text("".join(HELD.read_text().splitlines(keepends=True)[:2]))
    report_path = tmp_path / "report.json"
    out = subprocess.run(
        [sys.executable, "-m", "planvm", "eval", "--adapter", str(trained.output_dir), "--data", str(held), "--max-new-tokens", "600", "--out", str(report_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "schema" in out.stdout and "template" in out.stdout and "2 goals" in out.stdout
    report = json.loads(report_path.read_text())
    assert set(report) == {"adapter", "base model", "template"}
    for name in ("adapter", "base model"):
        assert report[name]["summary"]["parsed"] == 1.0 and report[name]["summary"]["schema_valid"] == 1.0
    template = report["template"]["summary"]
    assert template["statically_valid"] == 1.0 and template["executable"] == 1.0


def test_scoring():
    from training.evaluate import dataflow_edges, score, tool_sequence
    from tools import default_registry

    gold = load_rows(TRAIN).rows[0].plan
    assert score(gold, gold, default_registry()) == {
        "parsed": 1.0, "schema_valid": 1.0, "statically_valid": 1.0, "executable": 1.0, "tool_sequence_match": 1.0, "dataflow_similarity": 1.0,
    }
    assert tool_sequence(gold) == ["retrieve_knowledge_graph", "vector_search", "llm_generate"]
    assert ("vector_search", "llm_generate") in dataflow_edges(gold)
    assert score(None, gold, default_registry())["parsed"] == 0.0
    broken = [{"seq_no": 0, "type": "calling", "parameters": {"tool_name": "vector_search", "tool_params": {"query": "x"}, "output_vars": ["final_answer"]}}]
    partial = score(broken, gold, default_registry())
    assert partial["statically_valid"] == 1.0 and partial["tool_sequence_match"] == 0.0 and partial["dataflow_similarity"] == 0.0


# --- data generation -------------------------------------------------------------------------------------------


def test_datagen_keeps_completed_runs_and_resumes(tmp_path):
    from planner import Planner
    from planner.prompt import format_completion
    from tools import default_registry
    from training.datagen import generate_rows
    from vm import VM

    class Memory:
        def search(self, query, top_k):
            return [{"content": "planvm runs plans.", "source_uri": "m", "score": 1.0}]

        def graph(self, query):
            return {"entities": [], "relationships": []}

    good_plan = [
        {"seq_no": 0, "type": "calling", "parameters": {"tool_name": "vector_search", "tool_params": {"query": "planvm"}, "output_vars": ["chunks"]}},
        {"seq_no": 1, "type": "calling", "parameters": {"tool_name": "llm_generate", "tool_params": {"prompt": "What is planvm?", "context": "${chunks}"}, "output_vars": ["final_answer"]}},
    ]
    teacher = ScriptedLLM('{"questions": ["What is planvm?", "Who runs plans?"]}', "not json at all", '{"questions": ["Third?"]}')
    planner_llm = ScriptedLLM(format_completion("look up", good_plan), "no plan", "no plan", "no plan", format_completion("look up", good_plan))
    registry = default_registry(Memory())
    run_llm = ScriptedLLM("planvm is a VM for plans.", "An answer.")
    out = tmp_path / "rows.jsonl"
    chunks = [{"content": "planvm runs plans.", "source_uri": "a.md"}, {"content": "x", "source_uri": "b.md"}]
    report = generate_rows(chunks, teacher, Planner(planner_llm, registry), VM(registry, llm=run_llm), out, max_rows=10)
    assert (report.kept, report.rejected, report.questions) == (1, 1, 2)
    rows = load_rows(out, registry, strict=True).rows
    assert rows[0].goal == "What is planvm?" and rows[0].final_answer == "planvm is a VM for plans."
    # a rerun skips both finished chunks
    again = generate_rows(chunks + [{"content": "more", "source_uri": "c.md"}], teacher, Planner(planner_llm, registry), VM(registry, llm=run_llm), out, max_rows=10)
    assert again.chunks_skipped == 2 and again.chunks_seen == 1 and again.kept == 1
    assert len(load_rows(out, registry).rows) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--base-model", "/no/such/model"], "is not a model folder"),
        (["train", "--config", "missing.toml"], "no such config file"),
        (["eval"], "pass --adapter"),
        (["eval", "--adapter", "."], "naming the base model"),
        (["datagen", "--out", "rows.jsonl"], "needs a teacher LLM"),
    ],
)
def test_training_commands_reject_bad_input(args, message, tmp_path):
    out = subprocess.run([sys.executable, "-m", "planvm", *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 2, out.stderr[-500:]
    assert message in out.stderr and "Traceback" not in out.stderr


def _planvm_without_xgrammar(*args: str) -> subprocess.CompletedProcess[str]:
    """`planvm` in a process where xgrammar cannot be imported (as after an install without it)."""
    code = "import sys; sys.modules['xgrammar'] = None; from planvm.cli.main import main; sys.argv[0] = 'planvm'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_eval_without_xgrammar_never_scores_silently(trained, tmp_path):
    held = tmp_path / "held.jsonl"
    held.write_text("".join(HELD.read_text().splitlines(keepends=True)[:1]))
    asked = _planvm_without_xgrammar("eval", "--adapter", str(trained.output_dir), "--data", str(held), "--constrained")
    assert asked.returncode == 2
    assert "pip install -e '.[constrained]' && pip install --no-deps 'xgrammar==0.2.8'" in asked.stderr
    free = _planvm_without_xgrammar("eval", "--adapter", str(trained.output_dir), "--data", str(held), "--max-new-tokens", "40",
                                    "--no-compare-base")
    assert free.returncode == 0, free.stderr[-2000:]
    assert "NOT constrained" in free.stdout and "NOT constrained" in free.stderr
    assert ".[constrained]'" in free.stdout  # the table's footnote keeps the whole install line
    assert (trained.output_dir / "eval_report.json").is_file()  # beside the adapter
