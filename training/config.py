"""The training configuration: one object, every field documented, saved beside the adapter.

Load it from TOML or YAML (``TrainConfig.from_file``), then override fields from flags. Defaults
follow the original recipe: LoRA r=16, alpha=16, dropout 0 on the attention and MLP projections,
learning rate 1e-4 with a linear schedule, 5 warm-up steps, weight decay 0.1, seed 3407,
adamw_8bit on a GPU.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vm.errors import BadInput

__all__ = ["TrainConfig"]


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_model: str = Field("unsloth/DeepSeek-R1-Distill-Qwen-7B", description="Base model name or folder.")
    data: str = Field("examples/train/train.jsonl", description="Training rows: JSON, JSONL, or a datasets name/folder.")
    eval_data: str | None = Field("examples/train/held_out.jsonl", description="Held-out rows for the eval loss (optional).")
    output_dir: str = Field("outputs/planner-lora", description="Where the adapter, config, metrics and loss plot go.")
    backend: Literal["auto", "hf", "unsloth"] = Field("auto", description="auto: unsloth on a CUDA GPU when installed, else hf (transformers + peft + trl).")
    strict: bool = Field(False, description="Fail on an invalid row instead of dropping it.")

    max_length: int = Field(8192, gt=0, description="Longest prompt + completion, in tokens.")
    lora_r: int = Field(16, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(16, gt=0, description="LoRA alpha (scaling).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Modules that get LoRA adapters.",
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Modules trained in full and saved with the adapter (e.g. lm_head for a base model that was never trained).",
    )
    load_in_4bit: bool = Field(False, description="Load the base model in 4 bits (unsloth, GPU only).")
    gradient_checkpointing: bool = Field(True, description="Trade compute for memory (GPU).")

    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate.")
    lr_scheduler_type: str = Field("linear", description="Learning-rate schedule.")
    warmup_steps: int = Field(5, ge=0, description="Warm-up steps.")
    weight_decay: float = Field(0.1, ge=0, description="Weight decay.")
    optim: str | None = Field(None, description="Optimizer (default: adamw_8bit on a GPU, adamw_torch on a CPU).")
    per_device_train_batch_size: int = Field(4, gt=0, description="Rows per device per step.")
    gradient_accumulation_steps: int = Field(4, gt=0, description="Steps accumulated per optimizer update.")
    num_train_epochs: float = Field(3, gt=0, description="Passes over the data (ignored when max_steps > 0).")
    max_steps: int = Field(-1, description="Optimizer updates in all; -1 runs num_train_epochs.")
    logging_steps: int = Field(1, gt=0, description="Log the loss every N updates.")
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every N updates (default: once per epoch).")
    seed: int = Field(3407, description="Random seed.")
    report_to: list[str] = Field(default_factory=list, description="Trackers (tensorboard, wandb...); none by default.")
    merge: bool = Field(False, description="Also save the base model with the adapter merged in (output_dir/merged).")
    use_cpu: bool | None = Field(None, description="Train on the CPU (default: when no CUDA GPU is present).")

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """A config from a TOML or YAML file, with ``overrides`` (not None) on top."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BadInput(f"{path}: no such config file") from None
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise BadInput(f"{path}: not valid TOML ({exc})") from None
        if not isinstance(data, dict):
            raise BadInput(f"{path}: a training config is a table of settings")
        data = _relative_to(path.parent, data)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.build(**data)

    #: The settings of ``planvm train --quick``: a short run on the tiny offline model that shows
    #: the loss going down in about a minute on 2 CPU cores (its output layer is trained too, as
    #: the tiny model was never pre-trained).
    QUICK: ClassVar[dict[str, Any]] = {
        "max_steps": 200, "learning_rate": 5e-3, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
        "warmup_steps": 5, "lora_alpha": 32, "modules_to_save": ["lm_head"], "eval_data": None, "max_length": 6000,
        "logging_steps": 10, "output_dir": "outputs/quick-lora",
    }

    @classmethod
    def build(cls, **values: Any) -> TrainConfig:
        """A config from values, with errors that name each bad field."""
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
            raise BadInput(f"the training config is not valid: {problems}") from None


_PATH_FIELDS = ("data", "eval_data", "output_dir", "base_model")


def _relative_to(folder: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Paths in a config file are relative to the file's folder: ``output_dir`` always, ``data``,
    ``eval_data`` and ``base_model`` when they name something there (else they are dataset or
    model names, left as they are)."""
    found = dict(data)
    for name in _PATH_FIELDS:
        value = found.get(name)
        if not isinstance(value, str) or not value or Path(value).is_absolute() or value.startswith("~"):
            continue
        here = folder / value
        if name == "output_dir" or here.exists():
            found[name] = str(here)
    return found
