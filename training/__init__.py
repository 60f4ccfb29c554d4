"""Training: datasets, LoRA fine-tuning, evaluation and data generation for the planner.

Heavy libraries (torch, transformers, peft, trl, datasets) load only inside the functions that
use them.
"""

from training.config import TrainConfig
from training.data import DatasetError, Row, load_rows, normalise_plan, to_sft_records

__all__ = ["DatasetError", "Row", "TrainConfig", "load_rows", "normalise_plan", "to_sft_records"]
