"""The engine every front end calls: one configuration, one method per operation, one shape per thing.

Front ends (``planvm.cli``, ``planvm.server``, ``planvm.mcp``, workers) parse their transport and
call :class:`Engine`; the engine calls the VM, the tools, the planner and the run store, and
imports none of the front ends.
"""

from planvm.engine.config import EngineConfig, LimitsTable
from planvm.engine.engine import Engine
from planvm.engine.tools import make_registry, options_for_run, tool_sources
from planvm.engine.shapes import PlanView, RunDetail, RunOutcome, RunSummary, StepView

__all__ = [
    "Engine", "EngineConfig", "LimitsTable", "PlanView", "RunDetail", "RunOutcome", "RunSummary", "StepView", "make_registry",
    "options_for_run", "tool_sources",
]
