"""The planner: turns a goal into a plan for the VM (with an LLM, or the template baseline)."""

from planner.planner import Attempt, Planner, PlanResult, parse_reply
from planner.prompt import (
    build_prompt,
    build_training_example,
    describe_goal,
    format_completion,
)
from planner.template import TemplatePlanner, goal_language

__all__ = [
    "Attempt",
    "PlanResult",
    "Planner",
    "TemplatePlanner",
    "build_prompt",
    "build_training_example",
    "describe_goal",
    "format_completion",
    "goal_language",
    "parse_reply",
]
