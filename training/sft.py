"""Supervised fine-tuning of the planner with LoRA.

    planvm train --config train.toml                    # or: python -m training.sft CONFIG
    planvm train --base-model ./my-base --data rows.jsonl --output outputs/run1

Two backends, one config and one output: ``unsloth`` on a CUDA GPU when it is installed
(``pip install 'planvm[gpu]'``; it patches transformers and trl when imported, so it is imported
only on that path), otherwise ``hf``: transformers + peft + trl's SFTTrainer, which also runs on a
CPU. Rows become conversational prompt-completion records built by the planner's own prompt
builder; the loss is computed on the completion only.

Output folder: the adapter (``PeftModel.from_pretrained`` loads it), the tokenizer,
``training_config.json`` (the resolved config), ``metrics.json``, ``loss.png`` (train and eval loss
per step), and with ``merge`` a ``merged/`` folder with full weights. The ``hf`` backend runs
unchanged under ``accelerate launch`` (multi-GPU, DeepSpeed configs).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.config import TrainConfig
from training.data import load_rows, to_sft_records
from vm.errors import BadInput

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    output_dir: Path
    backend: str
    metrics: dict[str, Any] = field(default_factory=dict)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _check(config: TrainConfig) -> tuple[str, bool]:
    """(backend, use_cpu), or a clear error before any model is loaded."""
    cuda = _cuda()
    use_cpu = (not cuda) if config.use_cpu is None else config.use_cpu
    if use_cpu or not cuda:
        gpu_only = [name for name, on in (("load_in_4bit", config.load_in_4bit), ("optim=adamw_8bit", config.optim == "adamw_8bit"), ("backend=unsloth", config.backend == "unsloth")) if on]
        if gpu_only:
            raise BadInput(f"{', '.join(gpu_only)} needs a CUDA GPU, and this run is on the CPU; remove it from the config")
    backend = "hf"
    if config.backend in ("auto", "unsloth") and cuda and not use_cpu:
        try:
            import importlib.util

            if importlib.util.find_spec("unsloth") is not None:
                backend = "unsloth"
        except ImportError:  # pragma: no cover
            pass
        if config.backend == "unsloth" and backend != "unsloth":
            raise BadInput("backend=unsloth but unsloth is not installed: pip install 'planvm[gpu]'")
    base = Path(config.base_model).expanduser()
    looks_local = config.base_model.startswith((".", "/", "~")) or base.exists()
    if looks_local and not (base / "config.json").is_file():
        raise BadInput(f"base model {config.base_model!r} is not a model folder (no config.json there)")
    if not looks_local:
        _check_hub_model(config.base_model)
    return backend, use_cpu


_TRY_OFFLINE = (
    "pass --base-model with a model folder; to try training with no download, build a tiny one: "
    "`planvm tiny-model tiny-base`, then --base-model tiny-base"
)


def _check_hub_model(name: str) -> None:
    """Fail within seconds, naming --base-model, when a hub model can be neither found in the
    local cache nor downloaded (instead of the hub client's minute of retries)."""
    import os

    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid repository id
        raise BadInput(f"base model {name!r} is neither a model folder nor a model name; {_TRY_OFFLINE}") from None
    if isinstance(cached, str):
        return
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        raise BadInput(f"base model {name!r} is not in the local model cache and HF_HUB_OFFLINE is set; {_TRY_OFFLINE}")
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        httpx.head(endpoint, timeout=5.0)
    except httpx.HTTPError as exc:
        raise BadInput(
            f"base model {name!r} is not in the local model cache and the model hub ({endpoint}) cannot be reached "
            f"({type(exc).__name__}); {_TRY_OFFLINE}"
        ) from None


def _load_hf(config: TrainConfig) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(config.base_model)
        model = AutoModelForCausalLM.from_pretrained(config.base_model, dtype="auto")
    except OSError as exc:
        raise BadInput(f"cannot load the base model {config.base_model!r}: {exc}") from exc
    return model, tokenizer


def _load_unsloth(config: TrainConfig) -> tuple[Any, Any]:  # pragma: no cover - needs a CUDA GPU
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=config.base_model, max_seq_length=config.max_length, dtype=None, load_in_4bit=config.load_in_4bit
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=config.lora_r,
        target_modules=config.target_modules,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        bias="none",
        use_gradient_checkpointing="unsloth" if config.gradient_checkpointing else False,
        random_state=config.seed,
    )
    return model, tokenizer


def _plot(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(config: TrainConfig, *, progress: str = "auto") -> TrainResult:
    """Fine-tune ``config.base_model`` on ``config.data``; return where the adapter is and its metrics.

    ``progress``: ``bar`` (a rich bar with the loss and the time left), ``lines`` (a line on
    stderr every tenth of the run), ``none``, or ``auto`` (a bar on a terminal, else lines)."""
    backend, use_cpu = _check(config)
    from tools import default_registry

    registry = default_registry()
    train_rows = load_rows(config.data, registry, strict=config.strict)
    eval_rows = load_rows(config.eval_data, registry, strict=config.strict) if config.eval_data else None

    import datasets
    from datasets import Dataset
    from peft import LoraConfig

    datasets.disable_progress_bars()  # preparing 40 rows needs no bars; training_progress shows the run
    from trl import SFTConfig, SFTTrainer

    if not sys.stderr.isatty():
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # no "Loading weights" bar in a log file
    model, tokenizer = _load_unsloth(config) if backend == "unsloth" else _load_hf(config)
    if not getattr(tokenizer, "chat_template", None):
        raise BadInput(f"the tokenizer of {config.base_model!r} has no chat template; the planner's prompt needs one")
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_ds = Dataset.from_list(to_sft_records(train_rows.rows, registry))
    eval_ds = Dataset.from_list(to_sft_records(eval_rows.rows, registry)) if eval_rows else None
    optim = config.optim or ("adamw_torch" if use_cpu else "adamw_8bit")
    args = SFTConfig(
        output_dir=str(out / "checkpoints"),
        use_cpu=use_cpu,
        bf16=False if use_cpu else None,
        max_length=config.max_length,
        completion_only_loss=True,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        optim=optim,
        logging_steps=config.logging_steps,
        eval_strategy=("steps" if config.eval_steps else "epoch") if eval_ds is not None else "no",
        eval_steps=config.eval_steps,
        save_strategy="no",
        seed=config.seed,
        report_to=config.report_to or "none",
        disable_tqdm=True,  # progress is ours (training_progress): a bar with the loss, or a line every few steps
        gradient_checkpointing=config.gradient_checkpointing and not use_cpu and backend == "hf",
    )
    peft_config = None
    if backend == "hf":
        peft_config = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=config.target_modules, bias="none", task_type="CAUSAL_LM",
            modules_to_save=config.modules_to_save or None,
        )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer, peft_config=peft_config)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for quiet in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(quiet)
    started = time.monotonic()
    with training_progress(progress) as callback:
        trainer.add_callback(callback)
        outcome = trainer.train()
    seconds = time.monotonic() - started
    trainer.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    metrics = {
        "backend": backend,
        "device": "cpu" if use_cpu else "cuda",
        "steps": trainer.state.global_step,
        "train_rows": len(train_rows.rows),
        "dropped_rows": train_rows.dropped,
        "eval_rows": len(eval_rows.rows) if eval_rows else 0,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "train_loss": outcome.training_loss,
        "eval_loss": eval_losses[-1] if eval_losses else None,
        "seconds": round(seconds, 2),
        "history": history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str), encoding="utf-8")
    (out / "training_config.json").write_text(config.model_dump_json(indent=2), encoding="utf-8")
    _plot(history, out / "loss.png")
    if config.merge:
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(out / "merged")
        tokenizer.save_pretrained(out / "merged")
    return TrainResult(out, backend, metrics)


if __name__ == "__main__":  # pragma: no cover - the CLI is `planvm train`
    import sys

    result = train(TrainConfig.from_file(sys.argv[1]))
    print(json.dumps({k: v for k, v in result.metrics.items() if k != "history"}, indent=2, default=str))


def training_progress(mode: str = "auto") -> Any:
    """A context giving a transformers ``TrainerCallback`` that shows training as it goes."""
    import contextlib
    import sys

    from transformers import TrainerCallback

    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "lines"

    class Lines(TrainerCallback):
        """A line every tenth of the run: step, the latest loss, time spent and left."""

        def __init__(self) -> None:
            self.started = time.monotonic()
            self.loss: float | None = None
            self.every = 1
            self.due: tuple[int, int] | None = None  # a step to report, once its loss is logged

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.monotonic()
            self.every = max(1, (state.max_steps or 1) // 10)

        def _report(self) -> None:
            if self.due is None or mode != "lines":
                self.due = None
                return
            step, total = self.due
            self.due = None
            elapsed = time.monotonic() - self.started
            left = elapsed / step * (total - step) if step else 0.0
            loss = f", loss {self.loss:.4f}" if self.loss is not None else ""
            print(f"training: step {step}/{total}{loss}, {elapsed:.0f} s, about {left:.0f} s left", file=sys.stderr, flush=True)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])
            self._report()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._report()  # a reported step that logged no loss

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._report()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step, total = state.global_step, state.max_steps or 0
            if step % self.every == 0 or step == total:
                self.due = (step, total)

    class Bar(Lines):
        def __init__(self, bar: Any) -> None:
            super().__init__()
            self.bar, self.task = bar, None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            super().on_train_begin(args, state, control, **kwargs)
            self.task = self.bar.add_task("training", total=state.max_steps, loss="")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            loss = f"loss {self.loss:.4f}" if self.loss is not None else ""
            self.bar.update(self.task, completed=state.global_step, loss=loss)

    @contextlib.contextmanager
    def shown() -> Any:
        if mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                          TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()) as bar:
                yield Bar(bar)
            return
        yield Lines() if mode == "lines" else TrainerCallback()

    return shown()
