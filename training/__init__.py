"""Training: datasets, LoRA fine-tuning and evaluation of the planner."""

__all__: list[str] = []
