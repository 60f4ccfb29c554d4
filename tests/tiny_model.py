"""Build a tiny Qwen2 model and a BPE tokenizer trained here, so the real loading, LoRA and
generation code runs with no download."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    'Goal: what is planvm? <think>retrieve then answer</think> ```json [{"seq_no": 0, "type": "calling", '
    '"parameters": {"tool_name": "vector_search", "tool_params": {"query": "planvm"}, "output_vars": ["chunks"]}}] ```',
    "assign calling jmp reasoning final_answer seq_no parameters tool_name tool_params output_vars",
    "The VM runs plans. A plan is a JSON array of instructions. The run ends when final_answer is set.",
]


def planner_corpus() -> list[str]:
    """Prompts and completions like the ones the tiny model sees, so its BPE merges fit them."""
    import json

    from planner.prompt import build_prompt, format_completion
    from tools import default_registry

    texts = []
    train = Path(__file__).resolve().parent.parent / "examples" / "train" / "train.jsonl"
    for line in train.read_text(encoding="utf-8").splitlines()[:20]:
        row = json.loads(line)
        plan = row["best_plan"] if isinstance(row["best_plan"], list) else json.loads(row["best_plan"])
        texts.append(format_completion(row["reasoning"], plan))
    texts.append(build_prompt("What is planvm?", None, default_registry()))
    return texts


def build_tiny_model(
    folder: Path, *, seed: int = 0, vocab_size: int = 400, corpus: list[str] | None = None, hidden_size: int = 32, layers: int = 2
) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator((corpus or []) + CORPUS * 5, trainer)
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
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
