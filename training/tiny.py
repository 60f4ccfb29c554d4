"""A tiny planner base model built on this machine: no download, real training.

``planvm tiny-model OUT`` writes a 2-layer Qwen2 with random weights and a byte-level BPE
tokenizer trained here on planner prompts and completions (from the training rows). It knows
nothing, but it loads, trains with LoRA, saves, reloads and generates through exactly the code a
real base model uses, in seconds on a CPU: the offline way to try the training pipeline.

    planvm tiny-model tiny-base
    planvm train --config examples/train/train.toml --base-model tiny-base --max-steps 30 --output tiny-lora
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from vm.errors import BadInput

__all__ = ["CHAT_TEMPLATE", "build_tiny_model", "default_rows_file", "planner_corpus"]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_SEED_TEXT = [
    'Goal: what is planvm? <think>retrieve then answer</think> ```json [{"seq_no": 0, "type": "calling", '
    '"parameters": {"tool_name": "vector_search", "tool_params": {"query": "planvm"}, "output_vars": ["chunks"]}}] ```',
    "assign calling jmp reasoning final_answer seq_no parameters tool_name tool_params output_vars",
    "The VM runs plans. A plan is a JSON array of instructions. The run ends when final_answer is set.",
]


def default_rows_file() -> Path | None:
    """``examples/train/train.jsonl`` of a source checkout, when there is one."""
    path = Path(__file__).resolve().parent.parent / "examples" / "train" / "train.jsonl"
    return path if path.is_file() else None


def planner_corpus(rows_file: str | Path | None = None, limit: int = 20) -> list[str]:
    """Planner prompts and completions, so the tokenizer's merges fit what the model will see."""
    from planner.prompt import build_prompt, format_completion
    from tools import default_registry

    texts = []
    path = Path(rows_file) if rows_file else default_rows_file()
    if path is not None:
        for line in path.read_text(encoding="utf-8").splitlines()[:limit]:
            if not line.strip():
                continue
            row = json.loads(line)
            plan = row["best_plan"] if isinstance(row["best_plan"], list) else json.loads(row["best_plan"])
            texts.append(format_completion(row.get("reasoning") or "", plan))
    texts.append(build_prompt("What is planvm?", None, default_registry()))
    return texts


def build_tiny_model(
    folder: str | Path,
    *,
    seed: int = 0,
    vocab_size: int = 400,
    corpus: Iterable[str] | None = None,
    hidden_size: int = 32,
    layers: int = 2,
) -> Path:
    """Write a tiny Qwen2 causal LM and its tokenizer (trained on ``corpus``) to ``folder``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    if hidden_size % 4:
        raise BadInput("hidden_size must be a multiple of 4 (the model has 4 attention heads)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,  # its progress lines are blank lines when stderr is not a terminal
    )
    bpe.train_from_iterator(list(corpus or []) + _SEED_TEXT * 5, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_tokens(["<think>", "</think>"])  # ordinary added tokens, kept when decoding
    tokenizer.chat_template = CHAT_TEMPLATE
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    from transformers.utils import logging as transformers_logging

    quiet = not transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # a one-file model: no "writing shards" bar
    try:
        model.save_pretrained(folder)
    finally:
        if not quiet:
            transformers_logging.enable_progress_bar()
    tokenizer.save_pretrained(folder)
    return folder
