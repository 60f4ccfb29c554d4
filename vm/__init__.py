"""planvm's virtual machine: the plan format, static validation and the interpreter.

This package imports no other planvm package and no heavy dependency.
"""

from vm.errors import (
    LLMCallFailed,
    ForkError,
    ReplayError,
    RunBusy,
    RunNotFound,
    StoreError,
    BackendUnavailable,
    ConditionError,
    ExpressionError,
    LimitExceeded,
    LLMCallLimitExceeded,
    LLMError,
    LLMUnavailable,
    NoFinalAnswer,
    OutputMappingError,
    PlanError,
    PlanLoadError,
    PlanValidationError,
    PlanVMError,
    Problem,
    ReferencePathError,
    RunError,
    StepLimitExceeded,
    TimeLimitExceeded,
    ToolError,
    ToolFailed,
    ToolNotAllowed,
    ToolNotFound,
    ToolParamsInvalid,
    ToolRegistrationError,
    VariableUndefined,
)
from vm.jsontext import extract_json
from vm.limits import Limits
from vm.llm import LLM, Completion, split_reasoning
from vm.machine import VM
from vm.replay import ReplayReport, StepCheck, areplay, areplay_live, replay, replay_live
from vm.store import RunStore, StoredRun, StoredStep
from vm.trace import RunResult, StepRecord
from vm.plan import load_plan_data, plan_json_schema
from vm.program import Program
from vm.tooling import CallContext, ToolCatalog, ToolSpec
from vm.validate import compile_plan, validate_plan

__all__ = [
    "BackendUnavailable",
    "CallContext",
    "Completion",
    "ConditionError",
    "ExpressionError",
    "ForkError",
    "LLM",
    "LLMCallFailed",
    "LLMCallLimitExceeded",
    "LLMError",
    "LLMUnavailable",
    "LimitExceeded",
    "Limits",
    "NoFinalAnswer",
    "OutputMappingError",
    "PlanError",
    "PlanLoadError",
    "PlanVMError",
    "PlanValidationError",
    "Problem",
    "Program",
    "ReferencePathError",
    "ReplayError",
    "ReplayReport",
    "RunBusy",
    "RunError",
    "RunNotFound",
    "RunResult",
    "RunStore",
    "StepCheck",
    "StepLimitExceeded",
    "StepRecord",
    "StoreError",
    "StoredRun",
    "StoredStep",
    "TimeLimitExceeded",
    "ToolCatalog",
    "ToolError",
    "ToolFailed",
    "ToolNotAllowed",
    "ToolNotFound",
    "ToolParamsInvalid",
    "ToolRegistrationError",
    "ToolSpec",
    "VM",
    "VariableUndefined",
    "areplay",
    "areplay_live",
    "compile_plan",
    "extract_json",
    "load_plan_data",
    "plan_json_schema",
    "replay",
    "replay_live",
    "split_reasoning",
    "validate_plan",
]
