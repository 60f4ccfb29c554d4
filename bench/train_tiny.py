"""Does training help? A tiny Qwen2 (built here, no download), before and after LoRA training on
examples/train, judged on the held-out goals with constrained decoding.

    python bench/train_tiny.py              # 600 steps on 2 cores: about 5 minutes
    python bench/train_tiny.py --steps 150  # quicker, weaker

The tiny base model is random (it was never pre-trained), so its output layer is trained too
(``modules_to_save=["lm_head"]``); with a real base model only the LoRA adapters are.

Prints the evaluation metrics of the untrained model and of the trained adapter.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--hidden", type=int, default=128, help="hidden size of the tiny model")
    parser.add_argument("--keep", help="keep the model and adapter in this folder")
    parser.add_argument("--lora-only", action="store_true", help="train only the LoRA adapters, not lm_head")
    args = parser.parse_args()

    from training.tiny import build_tiny_model, planner_corpus

    from planner.constrained import ConstrainedLocal
    from tools import default_registry
    from tools.llm_local import LocalChat
    from training import TrainConfig, load_rows
    from training.evaluate import METRICS, evaluate
    from training.sft import train

    registry = default_registry()
    held = load_rows(ROOT / "examples" / "train" / "held_out.jsonl", registry).rows
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        base = build_tiny_model(Path(tmp) / "base", vocab_size=1500, corpus=planner_corpus(), hidden_size=args.hidden)
        started = time.monotonic()
        result = train(
            TrainConfig.build(
                base_model=str(base), output_dir=str(Path(tmp) / "adapter"), max_steps=args.steps, per_device_train_batch_size=2,
                gradient_accumulation_steps=1, learning_rate=args.lr, warmup_steps=5, max_length=6000, lora_r=16, lora_alpha=32,
                eval_data=None, modules_to_save=[] if args.lora_only else ["lm_head"],
            )
        )
        print(f"trained {args.steps} steps in {time.monotonic() - started:.0f} s: loss {result.metrics['first_loss']:.3f} -> {result.metrics['last_loss']:.3f}")
        print(f"{'model':<12}" + "".join(f"{m:>22}" for m in METRICS))
        for name, adapter in (("untrained", None), ("trained", str(result.output_dir))):
            llm = ConstrainedLocal(LocalChat(str(base), adapter=adapter, max_new_tokens=400), max_think_tokens=200, max_plan_tokens=1600)
            report = evaluate(llm, held, registry, name=name)
            summary = report.summary()
            print(f"{name:<12}" + "".join(f"{summary[m]:>22.2f}" for m in METRICS), flush=True)
            for row in report.rows:
                if row["reply"]:
                    print(f"  no plan for {row['task_id']}: {row['reply'][:200]}")


if __name__ == "__main__":
    main()
