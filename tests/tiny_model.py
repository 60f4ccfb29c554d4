"""The tiny model builder the tests use: training.tiny, with the planner corpus at hand."""

from __future__ import annotations

from training.tiny import CHAT_TEMPLATE, build_tiny_model, planner_corpus

__all__ = ["CHAT_TEMPLATE", "build_tiny_model", "planner_corpus"]
