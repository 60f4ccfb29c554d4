"""planvm's virtual machine: the plan format, static validation and the interpreter.

This package imports no other planvm package and no heavy dependency.
"""

from vm.errors import (
    AnswerTruncated,
    ApprovalNeeded,
    BackendUnavailable,
    BadInput,
    ConditionError,
    EmptyAnswer,
    ExpressionError,
    ForkError,
    LeaseLost,
    LimitExceeded,
    LLMBadReply,
    LLMCallFailed,
    LLMCallLimitExceeded,
    LLMError,
    LLMNotConfigured,
    LLMUnavailable,
    NoFinalAnswer,
    OutputMappingError,
    PlanError,
    PlanLoadError,
    PlanningError,
    PlanValidationError,
    PlanVMError,
    Problem,
    ReferencePathError,
    ReplayError,
    RunBusy,
    RunCancelled,
    RunError,
    QuotaExceeded,
    RunNotFound,
    RunStateError,
    StepLimitExceeded,
    StoreError,
    StoreUnavailable,
    TimeLimitExceeded,
    TokenLimitExceeded,
    ToolError,
    ToolFailed,
    ToolNotAllowed,
    ToolNotFound,
    ToolParamsInvalid,
    ToolRegistrationError,
    ToolRejected,
    UnstorableValue,
    ValueTooLarge,
    VariableUndefined,
)
from vm.jsontext import extract_json
from vm.limits import Limits
from vm.llm import LLM, Completion, split_reasoning
from vm.machine import VM
from vm.plan import load_plan_data, plan_json_schema
from vm.program import Program
from vm.replay import (
    ReplayReport,
    StepCheck,
    areplay,
    areplay_live,
    replay,
    replay_live,
)
from vm.store import Store, StoredRun, StoredStep
from vm.tooling import CallContext, ToolCatalog, ToolSpec
from vm.trace import RunListener, RunResult, StepRecord
from vm.validate import compile_plan, validate_plan

__all__ = [
    "AnswerTruncated",
    "ApprovalNeeded",
    "BackendUnavailable",
    "BadInput",
    "CallContext",
    "Completion",
    "ConditionError",
    "EmptyAnswer",
    "ExpressionError",
    "ForkError",
    "LLM",
    "LLMBadReply",
    "LLMCallFailed",
    "LLMCallLimitExceeded",
    "LLMError",
    "LLMNotConfigured",
    "LLMUnavailable",
    "LeaseLost",
    "LimitExceeded",
    "Limits",
    "NoFinalAnswer",
    "OutputMappingError",
    "PlanError",
    "PlanLoadError",
    "PlanVMError",
    "PlanValidationError",
    "PlanningError",
    "Problem",
    "Program",
    "QuotaExceeded",
    "ReferencePathError",
    "ReplayError",
    "ReplayReport",
    "RunBusy",
    "RunCancelled",
    "RunError",
    "RunListener",
    "RunNotFound",
    "RunResult",
    "RunStateError",
    "RunStore",
    "StepCheck",
    "StepLimitExceeded",
    "StepRecord",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredRun",
    "StoredStep",
    "TimeLimitExceeded",
    "TokenLimitExceeded",
    "ToolCatalog",
    "ToolError",
    "ToolFailed",
    "ToolNotAllowed",
    "ToolNotFound",
    "ToolParamsInvalid",
    "ToolRegistrationError",
    "ToolRejected",
    "ToolSpec",
    "UnstorableValue",
    "VM",
    "ValueTooLarge",
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


def __getattr__(name: str) -> object:
    # The store's implementation is loaded when first named: the VM depends on vm.store.Store only.
    if name == "RunStore":
        from vm.store.store import RunStore

        return RunStore
    raise AttributeError(f"module 'vm' has no attribute {name!r}")
