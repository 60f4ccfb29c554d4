"""``planvm train``, ``planvm eval`` and ``planvm datagen``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from planvm.cli.common import guarded, make_engine, namespaced
from planvm.cli.options import kb_option
from planvm.cli.render import EXIT_FAILED, echo_err
from vm.errors import BadInput


@click.command(name="tiny-model")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--data", type=click.Path(dir_okay=False), help="Training rows whose text the tokenizer learns (default: the project's examples/train/train.jsonl).")
@click.option("--hidden-size", type=click.IntRange(min=8), default=64, show_default=True, help="Width of the model (a multiple of 4).")
@click.option("--vocab-size", type=click.IntRange(min=300), default=1500, show_default=True, help="Tokens in the tokenizer.")
@guarded
def tiny_model(folder: str, data: str | None, hidden_size: int, vocab_size: int) -> None:
    """Write a tiny random base model (2-layer Qwen2, tokenizer trained here) to try training offline."""
    from training.tiny import build_tiny_model, planner_corpus

    if data is not None and not Path(data).is_file():
        raise BadInput(f"{data}: no such file; pass training rows (JSONL) with --data")
    path = build_tiny_model(folder, vocab_size=vocab_size, corpus=planner_corpus(data), hidden_size=hidden_size)
    click.echo(f"tiny base model in {path}; train it with: planvm train --quick --base-model {path}")


@click.command(name="train")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML or YAML training config.")
@click.option("--data", help="Training rows (JSON, JSONL, or a datasets name/folder).")
@click.option("--eval-data", help="Held-out rows for the eval loss.")
@click.option("--base-model", help="Base model name or folder.")
@click.option("--output", "output_dir", help="Output folder.")
@click.option("--max-steps", type=click.IntRange(min=1), help="Optimizer updates in all.")
@click.option("--merge", is_flag=True, default=None, help="Also save merged full weights.")
@click.option("--quick", is_flag=True,
              help="A short run that shows the loss going down on a tiny offline model (planvm tiny-model DIR) in about a minute.")
@guarded
def train(config_file: str | None, quick: bool, **flags: Any) -> None:
    """Fine-tune the planner with LoRA (unsloth on a CUDA GPU, transformers + peft + trl otherwise).

    Paths in a --config file are relative to the file's folder; flags override it."""
    from training.config import TrainConfig
    from training.sft import train as run_training

    given = {k: v for k, v in flags.items() if v is not None}
    if quick:
        if config_file:
            raise BadInput("--quick is its own configuration; give it no --config (flags still override it)")
        if not given.get("base_model"):
            raise BadInput("--quick trains a local model: pass --base-model DIR (make a tiny one with `planvm tiny-model DIR`)")
        from training.tiny import default_rows_file

        rows = default_rows_file()
        config = TrainConfig.build(**{**TrainConfig.QUICK, **({"data": str(rows)} if rows else {}), **given})
    else:
        config = TrainConfig.from_file(config_file, **flags) if config_file else TrainConfig.build(**given)
    result = run_training(config)
    m = result.metrics
    click.echo(
        f"trained {m['steps']} steps on {m['train_rows']} rows ({len(m['dropped_rows'])} dropped) with {m['backend']} on {m['device']} "
        f"in {m['seconds']} s; loss {m['first_loss']:.4f} -> {m['last_loss']:.4f}"
        + (f", eval loss {m['eval_loss']:.4f}" if m.get("eval_loss") is not None else "")
        + f"\nadapter, config, metrics.json and loss.png in {result.output_dir}"
    )


def _adapter_base(adapter: str) -> str:
    for name, key in (("training_config.json", "base_model"), ("adapter_config.json", "base_model_name_or_path")):
        path = Path(adapter) / name
        if path.is_file():
            value = json.loads(path.read_text(encoding="utf-8")).get(key)
            if value:
                return str(value)
    raise BadInput(f"{adapter} holds no training_config.json or adapter_config.json naming the base model; pass --base-model")


def _default_held_out() -> str | None:
    from training.tiny import default_rows_file

    rows = default_rows_file()
    held_out = rows.with_name("held_out.jsonl") if rows is not None else None
    return str(held_out) if held_out is not None and held_out.is_file() else None


@click.command(name="eval")
@click.option("--adapter", type=click.Path(file_okay=False), help="The LoRA adapter folder to judge (required unless --base-model is given).")
@click.option("--base-model", help="Base model (default: the one the adapter was trained on).")
@click.option("--data", help="Held-out rows (JSON, JSONL or a datasets name; default: the project's examples/train/held_out.jsonl).")
@click.option("--constrained/--free", default=None,
              help="Constrain decoding to the plan schema (needs xgrammar), or not (default: constrained when xgrammar is installed).")
@click.option("--compare-base/--no-compare-base", default=True, show_default=True, help="Also judge the base model without the adapter.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=1024, show_default=True, help="Most tokens the model may write per goal.")
@click.option("--out", "out_file", help="Where to write the JSON report (default: eval_report.json in the adapter's folder, else here).")
@click.option("--endpoint", help="Instead of --adapter: an OpenAI-compatible server (e.g. vLLM serving the adapter) to score, as http://host:port/v1.")
@click.option("--model", "served_model", help="With --endpoint: the served model name to score (vLLM: the adapter's --lora-modules name).")
@click.option("--compare-model", help="With --endpoint: another served model to score beside it (e.g. the base model's name).")
@click.option("--api-key", help="With --endpoint: the server's key, if it needs one (default: the planner role's key from the settings).")
@guarded
def eval_(adapter: str | None, base_model: str | None, data: str | None, constrained: bool | None, compare_base: bool, max_new_tokens: int,
          out_file: str | None,
          endpoint: str | None, served_model: str | None, compare_model: str | None, api_key: str | None) -> None:
    """Score an adapter's plans on held-out goals, against the template baseline and the base model.

    With --endpoint and --model, the plans come from a served model (the plan schema sent as a
    structured-output constraint unless --free), scored the same way."""

    from tools import default_registry
    from tools.llm_local import LocalChat
    from training.data import load_rows
    from training.evaluate import evaluate

    if endpoint is not None or served_model is not None or compare_model is not None:
        if endpoint is None or served_model is None:
            raise BadInput("--endpoint and --model go together: the server's address and the served model to score")
        if adapter or base_model:
            raise BadInput("score either a served model (--endpoint, --model) or an in-process one (--adapter, --base-model), not both")
    elif not adapter and not base_model:
        raise BadInput("pass --adapter (and/or --base-model), or --endpoint URL --model NAME")
    data = data or _default_held_out()
    if data is None:
        raise BadInput("pass --data with the held-out rows to judge on")
    out_file = out_file or str(Path(adapter) / "eval_report.json" if adapter else "eval_report.json")
    note = None
    if endpoint is None:
        from planner.constrained import INSTALL_LINE

        try:
            import xgrammar  # noqa: F401
        except ImportError:
            if constrained:
                raise BadInput(f"--constrained needs xgrammar, which is not installed: {INSTALL_LINE} (or pass --free)") from None
            constrained = False
            note = f"decoding NOT constrained: xgrammar is not installed ({INSTALL_LINE})"
            echo_err(f"warning: {note}")
        else:
            constrained = True if constrained is None else constrained
    constrained = True if constrained is None else constrained
    registry = default_registry()
    rows = load_rows(data, registry).rows
    reports = []
    if endpoint is not None:
        for name in (served_model, compare_model):
            if name:
                served = _served_planner(endpoint, name, api_key, max_new_tokens, constrained)
                reports.append(evaluate(served, rows, registry, name=f"{name} (served)"))
        _finish_eval(reports, rows, registry, out_file, note)
        return
    base = base_model or _adapter_base(adapter)  # type: ignore[arg-type]

    def llm(adapter_dir: str | None) -> Any:
        local = LocalChat(base, adapter=adapter_dir, max_new_tokens=max_new_tokens)
        if constrained:
            from planner.constrained import ConstrainedLocal

            return ConstrainedLocal(local, max_plan_tokens=max_new_tokens * 4)
        return local

    if adapter:
        reports.append(evaluate(llm(adapter), rows, registry, name="adapter"))
    if compare_base or not adapter:
        reports.append(evaluate(llm(None), rows, registry, name="base model"))
    _finish_eval(reports, rows, registry, out_file, note)


def _served_planner(endpoint: str, model: str, api_key: str | None, max_tokens: int, constrained: bool) -> Any:
    """A served planner's client made from the settings as the planner role sees them (its
    deadlines, retries and key: PLANVM_PLANNER_*, PLANVM_LLM_*, OPENAI_API_KEY, planvm.toml), with
    the endpoint and model this command scores."""
    from pydantic import SecretStr

    from planvm.engine import EngineConfig
    from tools.backends import make_llm

    update: dict[str, Any] = {"llm_backend": "openai", "llm_base_url": endpoint, "llm_model": model, "llm_max_tokens": max_tokens,
                              "llm_json_mode": "schema" if constrained else "off"}
    if api_key:
        update["llm_api_key"] = SecretStr(api_key)
    return make_llm(EngineConfig.load(namespaced({})).for_role("planner").model_copy(update=update))


def _finish_eval(reports: list[Any], rows: list[Any], registry: Any, out_file: str, note: str | None = None) -> None:
    """Add the template baseline, write the report and print the table."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from planner import TemplatePlanner
    from training.evaluate import METRICS, evaluate, write_report

    reports.append(evaluate(TemplatePlanner(registry), rows, registry, name="template"))
    write_report(reports, out_file)
    headers = {"parsed": "parsed", "schema_valid": "schema", "statically_valid": "valid", "executable": "runs", "tool_sequence_match": "tools", "dataflow_similarity": "flow"}
    caption = "share of goals; flow: data-flow similarity to the gold plan" + (f"\n{escape(note)}" if note else "")  # the note holds '.[constrained]'
    table = Table("planner", *(headers[m] for m in METRICS), caption=caption)
    for report in reports:
        summary = report.summary()
        table.add_row(report.name, *(f"{summary[m]:.2f}" for m in METRICS))
    Console().print(table)
    click.echo(f"{len(rows)} goals; report in {out_file}")


@click.command()
@kb_option
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False), help="JSONL file the rows are appended to.")
@click.option("--max-rows", type=click.IntRange(min=1), default=100, show_default=True, help="Stop once the file holds this many rows.")
@click.option("--questions-per-chunk", type=click.IntRange(min=1), default=2, show_default=True, help="Questions the teacher writes per chunk.")
@guarded
def datagen(kb_path: str | None, out_file: str, max_rows: int, questions_per_chunk: int) -> None:
    """Make training rows: chunks -> questions -> plans -> runs, keeping the runs that complete (resumable)."""
    from rich.progress import Progress

    from tools.kb import LocalKnowledgeBase
    from training.datagen import generate_rows

    # The engine's planner (its constrained decoding, on a local teacher) and VM; runs are not recorded.
    with make_engine({"kb_path": kb_path, "no_library": True}, record=False, quiet=True) as engine, \
            Progress(disable=not sys.stderr.isatty()) as bar:
        if not engine.has_model("planner"):
            raise BadInput("datagen needs a teacher LLM: set PLANVM_LLM_BASE_URL and PLANVM_LLM_MODEL (or PLANVM_LOCAL_MODEL)")
        chunks = LocalKnowledgeBase(engine.settings.kb_path())._version.chunks
        task = bar.add_task("chunks", total=len(chunks))
        report = generate_rows(
            chunks, engine.llms["planner"], engine.planner("llm"), engine.vm, out_file, questions_per_chunk=questions_per_chunk,
            max_rows=max_rows, progress=lambda done, total: bar.update(task, completed=done),
        )
    click.echo(
        f"kept {report.kept} rows ({report.rejected} rejected) from {report.questions} questions over "
        f"{report.chunks_seen} chunks ({report.chunks_skipped} already done) -> {out_file}"
    )
    if report.kept == 0 and report.chunks_seen:
        echo_err(
            "error: no row was kept: the teacher wrote no usable questions, or no plan ran to an answer "
            "(see the warnings above); check the teacher LLM and the knowledge base"
        )
        sys.exit(EXIT_FAILED)
