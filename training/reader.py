"""Learn the answer reader: a LoRA adapter and head on all-MiniLM-L6-v2, in tools/kb/reader/.

    python -m training.reader            # generate the pairs, train (about 15 minutes on 2 CPU cores), write the adapter
    python -m training.answer_model --calibrate --set CORPUS QUESTIONS   # then set the thresholds again

The pairs come from the same generated questions as the answer model's (:mod:`training.answer_model`:
examples/kb, this project's docs/ and installed packages' Markdown descriptions; never an
evaluation corpus). For each question the folder is searched; the passage the question was made
from is a positive and every other retrieved passage a negative. Half the questions are asked
again with their source page left out, the other half with a name no document of the folder holds
("... on Nomad"); all their passages are negatives. The model reads ``question [SEP] heading +
passage`` and is trained with binary cross-entropy, positives weighted up to balance the classes.
"""

from __future__ import annotations

import json
import random
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED = 8
PAIRS = 6000
MAX_LENGTH = 192
BATCH = 16
RATE = 5e-4
QUESTIONS = {"examples-kb": 300, "docs": 900, "packages": 1500}


def pairs(seed: int = SEED) -> list[tuple[str, str, float]]:
    """(question, passage text, label) from generated questions, shuffled."""
    from tools.kb import Embedder
    from tools.kb.evidence import passages_of
    from tools.kb.reader import passage_text
    from training.answer_model import _positive, _stop_words, capitalised_names, generate, generation_kbs

    rng = random.Random(seed)
    stop = _stop_words()
    out: list[tuple[str, str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        kbs = generation_kbs(Path(tmp), Embedder())
        names = capitalised_names(kbs)
        for name, kb in kbs.items():
            foreign = sorted({w for other, words in names.items() if other != name for w in words})
            vocabulary = {w.lower() for c in kb._version.chunks for w in re.findall(r"[A-Za-z][\w-]+", c["content"])}
            for row in generate(kb, stop, rng, QUESTIONS[name]):
                question = row["q"]
                found = passages_of(kb.search(question, top_k=8))
                labels = [_positive(row, p) for p in found]
                if any(labels):
                    out += [(question, passage_text(p.heading, p.text), float(y)) for p, y in zip(found, labels, strict=True)]
                if rng.random() < 0.5:  # the page that answers is gone: near misses
                    others = [h for h in kb.search(question, top_k=16) if h["source_uri"] != row["source"]][:8]
                    out += [(question, passage_text(p.heading, p.text), 0.0) for p in passages_of(others)]
                else:  # about something no document of the folder holds
                    term = next((t for t in rng.sample(foreign, min(40, len(foreign))) if t.lower() not in vocabulary), None)
                    if term:
                        asked = question.rstrip("?.") + rng.choice((" on {}?", " with {}?", " for {}?", " in {}?", " using {}?")).format(term)
                        out += [(asked, passage_text(p.heading, p.text), 0.0) for p in passages_of(kb.search(asked, top_k=8))]
            print(f"{name}: {len(out)} pairs so far", flush=True)
    rng.shuffle(out)
    return out


def train(data: list[tuple[str, str, float]], target: Path, seed: int = SEED) -> None:
    """Train the adapter on ``data`` (all positives, negatives up to :data:`PAIRS` in all) into ``target``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tools.kb.embedding import DEFAULT_MODEL, _resolve

    torch.manual_seed(seed)
    rng = random.Random(seed)
    positives = [d for d in data if d[2] > 0]
    negatives = [d for d in data if d[2] == 0]
    rng.shuffle(negatives)
    chosen = positives + negatives[: max(PAIRS - len(positives), 2 * len(positives))]
    rng.shuffle(chosen)
    base = _resolve(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, modules_to_save=["classifier", "pooler"],
                                             target_modules=r".*encoder.*\.(query|key|value|dense)$"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=RATE, weight_decay=0.01)
    steps = (len(chosen) + BATCH - 1) // BATCH
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50) * max(0.0, 1 - s / steps))
    balance = torch.tensor(min((len(chosen) - len(positives)) / max(len(positives), 1), 4.0))
    model.train()
    for step in range(steps):
        batch = chosen[step * BATCH : (step + 1) * BATCH]
        encoded = tokenizer([b[0] for b in batch], [b[1] for b in batch], truncation="only_second",
                            max_length=MAX_LENGTH, padding=True, return_tensors="pt")
        logits = model(**encoded).logits.squeeze(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([b[2] for b in batch]), pos_weight=balance)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 50 == 0:
            print(f"step {step}/{steps}: loss {loss.item():.3f}", flush=True)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target))
    config = json.loads((target / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = DEFAULT_MODEL  # not this machine's path
    (target / "adapter_config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    (target / "README.md").unlink(missing_ok=True)
    about = {
        "about": "LoRA adapter and head making all-MiniLM-L6-v2 a cross-encoder that says whether a passage answers "
                 "a question; written by python -m training.reader from generated questions (no evaluation corpus).",
        "base_model": DEFAULT_MODEL,
        "max_length": MAX_LENGTH,
        "training": {"pairs": len(chosen), "positives": len(positives), "seed": seed, "rate": RATE, "batch": BATCH},
    }
    (target / "reader.json").write_text(json.dumps(about, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {target}")


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from tools.kb.reader import READER_FOLDER

    train(pairs(), READER_FOLDER)


if __name__ == "__main__":
    main()
