"""The engine: one method per operation, called by every front end.

The command line, the HTTP service, the MCP server, workers and the plan search all go through an
:class:`Engine`: built from an :class:`~planvm.engine.config.EngineConfig`, it resolves the
settings once into the tool registry, the run store and one LLM per model role (planner, answer,
condition, judge), and runs plan → validate → run → record. The knowledge-base check, the
constrained decoding wrapper and the plan library's examples happen here, once. Front ends add
only transport: printing, HTTP and event streams, MCP messages, scheduling.

This module imports no click, FastAPI or MCP SDK.
"""

from __future__ import annotations

import asyncio
import copy
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from planvm.engine.config import EngineConfig
from planvm.engine.planning import _Planning, in_daemon_thread
from planvm.engine.reads import _Reads
from planvm.engine.tools import make_registry, tool_sources
from vm import VM, Limits, RunListener, RunResult
from vm.errors import BadInput, LLMError, PlanningError, PlanVMError
from vm.validate import LARGE_PLAN

__all__ = ["Engine"]

Role = Literal["local", "service", "worker"]
ROLES = ("local", "service", "worker")
CANCELLED = "cancelled on request"


class Engine(_Planning, _Reads):
    """Settings resolved once: tools, store, model roles, limits. Cheap to share between runs.

    ``config``: an :class:`EngineConfig`, or a front end's options (``store_path``, ``kb_path``,
    ``plugins``, ``max_steps``…) laid over ``PLANVM_*`` variables and ``planvm.toml``.
    ``record=False`` keeps runs out of the store; ``readonly=True`` only reads it (opened on first
    read; no tools, models or VM are built). ``role``: ``local`` (a command, a Python caller: a run
    stopped from outside is ``interrupted``), ``service`` (one event loop serves many runs: the
    store is called in threads) or ``worker`` (also gives runs stopped with it back to the queue);
    :meth:`as_role` makes one engine serve another role. ``on_step`` and ``on_start`` are called
    for every run (progress on a terminal). Tools, models and the VM are built once, on first use,
    from these. ``notify`` receives notes for the user (a planner chosen for them, a missing
    optional package).
    """

    _borrowed = False  # a role of another engine (see as_role): sharing its tools, models and store
    _borrowed_store = False  # a namespace's engine (see in_namespace): another engine's store, closed by it

    def __init__(
        self, config: EngineConfig | Mapping[str, Any] | None = None, *, record: bool = True, readonly: bool = False,
        role: Role = "local", notify: Callable[[str], None] | None = None, on_step: Callable[[Any], None] | None = None,
        on_start: Callable[[str], None] | None = None, store: Any = None,
    ) -> None:
        if role not in ROLES:
            raise BadInput(f"role is one of {', '.join(ROLES)}, not {role!r}")
        self.config = config if isinstance(config, EngineConfig) else EngineConfig.load(config)
        self.settings = self.config
        self.notify = notify or (lambda _message: None)
        self.role = role
        self.readonly = readonly
        self._noted: set[str] = set()
        self._vm_callbacks = {"on_step": on_step, "on_start": on_start}
        self.limits = Limits(**self.config.limits.given())
        self.approve_tools = frozenset(self.config.approve_tools)
        self.store: Any = None
        self._namespaces: dict[str, Engine] = {}  # other namespaces' engines (see in_namespace)
        self._made_from: Engine | None = None  # the engine this namespace's engine was made from (see in_namespace)
        if record and not readonly:
            from vm import RunStore

            if store is None:
                store = RunStore(self.config.store, lease_seconds=self.config.lease_seconds,
                                 retry_seconds=self.config.store_retry_seconds)
            else:
                self._borrowed_store = True
            self.store = store.in_namespace(self.config.namespace, max_active_runs=self.config.max_active_runs,
                                            tokens_per_day=self.config.tokens_per_day)
        self._read_store: Any = None  # a store opened only to read (runs not recorded, or readonly)
        self._library: Any = None

    # Built on first use, from what was given at construction (an engine that only reads builds none).

    @functools.cached_property
    def registry(self) -> Any:
        return make_registry(self.config)

    @functools.cached_property
    def llms(self) -> dict[str, Any]:
        from tools.backends import make_llms

        return make_llms(self.config, ("planner", "answer", "condition", "judge"))

    @functools.cached_property
    def vm(self) -> VM:
        """The VM of this engine's role: a service calls the store in threads (its event loop
        serves many runs); a worker too on a database server, and gives runs stopped with it back
        to the queue; elsewhere a stopped run is ``interrupted`` (resume it)."""
        if self.readonly:
            raise PlanVMError("this engine only reads the run store; build it without readonly=True to run plans")
        threads = self.role == "service" or (self.role == "worker" and getattr(self.store, "parallel_calls", 1) > 1)
        vm = VM(
            self.registry, llm=self.llms["answer"], condition_llm=self.llms["condition"], limits=self.limits,
            allowed_tools=self.config.allow_tools or None, store=self.store, concurrency=self.config.concurrency,
            approve_tools=self.approve_tools, store_in_threads=threads, stopped_status="queued" if self.role == "worker" else "interrupted",
            tool_sources=tool_sources(self.config), **self._vm_callbacks,
        )
        if self._made_from is not None and self._made_from.store is not None:
            vm.share_store_threads(self._made_from.vm)  # one store, one set of store threads, whatever the namespaces
        return vm

    def as_role(self, role: Role) -> Engine:
        """This engine, or one sharing its settings, tools, models and store in another role
        (``service``, ``worker``); close only the original."""
        if role == self.role:
            return self
        if role not in ROLES:
            raise BadInput(f"role is one of {', '.join(ROLES)}, not {role!r}")
        threads = role == "service" or (role == "worker" and getattr(self.store, "parallel_calls", 1) > 1)
        vm = self.vm.derive(store_in_threads=threads, stopped_status="queued" if role == "worker" else "interrupted")
        other = copy.copy(self)  # (after the VM: its tools and models are built, and shared)
        other.role = role
        other.__dict__["vm"] = vm
        other._borrowed = True
        return other

    def in_namespace(self, name: str) -> Engine:
        """The engine of namespace ``name`` (this one when it is its own): its own tools, models,
        knowledge base, limits and quotas from its ``[namespaces.NAME]`` table, in this engine's
        role, over the same run store (one set of connections). Built once per name; closed with
        this engine. ``BadInput`` for a namespace that is not declared."""
        if name == self.config.namespace:
            return self
        found = self._namespaces.get(name)
        if found is None:
            if self._borrowed:
                raise PlanVMError("in_namespace is asked of the engine a role was made from, not of the role")
            found = Engine(self.config.for_namespace(name), record=self.store is not None, readonly=self.readonly, role=self.role,
                           notify=self.notify, store=self.store, **self._vm_callbacks)
            found._made_from = self
            self._namespaces[name] = found
        return found

    def _note(self, message: str) -> None:
        """Tell the user once per engine (a service answering many requests says it once)."""
        if message not in self._noted:
            self._noted.add(message)
            self.notify(message)

    def with_limits(self, overrides: dict[str, Any] | None) -> VM:
        """The engine's VM, or one sharing its tools, store and threads under other limits."""
        if not overrides and self.config.tokens_per_day is None:
            return self.vm
        asked = self.limits.model_copy(update=overrides or {})
        return self.vm.derive(limits=self._within_quota(asked), keep=asked)

    def _within_quota(self, limits: Limits) -> Limits:
        """``limits`` with ``max_tokens`` lowered to what is left of the namespace's tokens of the day."""
        left = self.store.tokens_left() if self.store is not None and self.config.tokens_per_day is not None else None
        if left is None or (limits.max_tokens is not None and limits.max_tokens <= left):
            return limits
        return limits.model_copy(update={"max_tokens": max(1, left)})

    def for_stored(self, kept: dict[str, Any] | None, run_id: str) -> VM:
        """The VM to go on with the stored run ``run_id``: under the limits kept with it, lowered
        (never raised) by the limits this engine was given (flags, ``PLANVM_MAX_*``,
        ``[limits]``). A given limit above the run's is not applied, and the user is told so."""
        from vm.limits import continuing

        _limits, raised = continuing(kept, self.limits)
        for name, (asked, mine) in sorted(raised.items()):
            self._note(f"run {run_id} keeps its own {name} of {_shown(mine)}; the {_shown(asked)} given now can only lower a "
                       f"run's limits, not raise them (run its plan again as a new run for more)")
        vm = self.vm.for_run(kept)
        if self.config.tokens_per_day is not None:
            vm = vm.derive(limits=self._within_quota(vm.limits))
        return vm

    # --- planning -------------------------------------------------------------------------------

    def has_model(self, role: str = "planner") -> bool:
        return self.settings.for_role(role).chosen_llm_backend() != "extractive"

    def planner(self, kind: str | None = None) -> Any:
        """The planner ``kind`` names (``auto``, ``llm`` or ``template``; default: the configured
        choice) over these tools; an LLM planner on a local model decodes under the plan schema
        when xgrammar is installed."""
        from planner import Planner, TemplatePlanner

        kind = kind or self.config.planner_kind
        has_model = self.has_model("planner")
        if kind == "llm" and not has_model:
            raise BadInput(
                "--planner llm needs an LLM: set PLANVM_LLM_BASE_URL and PLANVM_LLM_MODEL (or PLANVM_PLANNER_BASE_URL and "
                "PLANVM_PLANNER_MODEL), or PLANVM_LOCAL_MODEL"
            )
        if kind == "template" or (kind == "auto" and not has_model):
            if kind == "auto":
                self._note(
                    "no LLM is configured, so the template planner writes the plan (set PLANVM_LLM_BASE_URL and "
                    "PLANVM_LLM_MODEL to plan with a model)"
                )
            return TemplatePlanner(self.registry)
        llm = self.llms["planner"]
        if self.settings.for_role("planner").chosen_llm_backend() == "local":
            try:
                import xgrammar  # noqa: F401
            except ImportError:
                from planner.constrained import INSTALL_LINE

                self._note(f"xgrammar is not installed, so the local model's plans are not constrained to the schema ({INSTALL_LINE})")
            else:
                from planner.constrained import ConstrainedLocal

                llm = ConstrainedLocal(llm)
        return Planner(llm, self.registry)

    @property
    def library(self) -> Any:
        """The plan library of this engine's run store (None when runs are not recorded and no
        store exists yet)."""
        if self._library is None:
            from planner.library import PlanLibrary

            try:
                store = self._reader(missing_ok=True)
            except PlanVMError:
                return None
            if store is None:
                return None
            self._library = PlanLibrary.for_settings(store, self.settings)
        return self._library

    def available_tools(self) -> set[str]:
        allowed = self.config.allow_tools
        names = set(self.registry.names())
        return names & set(allowed) if allowed else names

    def plan(
        self, goal: str, metadata: dict[str, Any] | None = None, kind: str | None = None, *, use_library: bool | None = None,
        streamed: Any = None,
    ) -> Any:
        """A validated plan for ``goal`` (a ``PlanResult``); raises ``PlanningError``.

        Unless the library is off (``use_library=False`` or the ``no_library`` option), a best
        plan kept for the same goal is reused without asking the planner, and the most similar
        ones are shown to an LLM planner as examples. ``streamed`` (a ``planner.stream.PlanListener``)
        hears an LLM planner's instructions as it writes them."""
        from planner import PlanResult
        from vm.validate import validate_plan

        if use_library is None:
            use_library = not self.config.no_library
        library = self.library if use_library else None
        tools = self.available_tools()
        if library is not None:
            hit = library.lookup(goal, metadata, tools)
            if hit is not None:
                program, _problems = validate_plan(hit.entry["plan"], self.registry)
                if program is not None:
                    self.notify(f"reusing the best plan kept for this goal ({hit.match} match, library entry {hit.entry['id']})")
                    return PlanResult(plan=program.to_data(), program=program, reasoning=hit.entry.get("reasoning") or "",
                                      planner="library", library=hit.describe())
        planner = self.planner(kind)
        if streamed is not None and hasattr(planner, "streamed"):
            planner.streamed = streamed
        self._show_examples(planner, library, goal, metadata)
        return planner.plan(goal, metadata)

    def _show_examples(self, planner: Any, library: Any, goal: str, metadata: dict[str, Any] | None) -> None:
        """Give an LLM planner the library's most similar kept plans as examples."""
        from planner import Planner

        if library is not None and isinstance(planner, Planner):
            planner.examples = library.examples(goal, metadata, self.available_tools()) or None

    def replan(self, run_id: str, from_seq: int, suggestion: str) -> Any:
        """A new plan for a stored run from ``from_seq`` on, as ``suggestion`` asks: the same LLM
        planner :meth:`plan` uses (constrained decoding, the library's examples)."""
        if not self.has_model("planner"):
            raise BadInput("a suggestion needs an LLM to re-plan: set PLANVM_LLM_BASE_URL and PLANVM_LLM_MODEL")
        stored = self._store().get(run_id)
        goal = stored.goal or f"Revise the plan as suggested: {suggestion}"  # runs of `exec` record no goal
        planner = self.planner("llm")
        self._show_examples(planner, None if self.config.no_library else self.library, goal, stored.metadata)
        return planner.update(stored.plan, stored, from_seq, suggestion, goal=goal)

    def judge(self, run_id: str) -> dict[str, Any]:
        """Grade a stored run with the judge model and keep the judgement with it (``JudgeError``
        for a run without an answer or unreadable replies)."""
        from planner.judge import Judge

        if not self.has_model("judge"):
            raise BadInput(
                "judging needs an LLM: set PLANVM_JUDGE_BASE_URL and PLANVM_JUDGE_MODEL (or the general PLANVM_LLM_BASE_URL and "
                "PLANVM_LLM_MODEL), or PLANVM_LOCAL_MODEL"
            )
        store = self._store()
        run = store.get(run_id)
        judgement = Judge(self.llms["judge"]).judge(run)
        store.set_judgement(run.id, judgement)
        return judgement

    def check_knowledge_base(self, plan: list[Any] | None) -> None:
        """Refuse, before running, a plan that retrieves from a knowledge base that is not there."""
        from tools.backends import RETRIEVAL_TOOLS, knowledge_base_missing

        if self.config.no_builtins:
            return
        missing = knowledge_base_missing(self.settings)
        if missing is None:
            return
        if plan is None:
            raise BadInput(missing)
        if any(isinstance(ins, dict) and ins.get("parameters", {}).get("tool_name") in RETRIEVAL_TOOLS for ins in plan):
            raise BadInput(f"the plan retrieves from the knowledge base, but there is {missing}")

    # --- running --------------------------------------------------------------------------------

    async def run_goal(
        self,
        goal: str,
        *,
        metadata: dict[str, Any] | None = None,
        planner_kind: str | None = None,
        limits: dict[str, Any] | None = None,
        approve_tools: Iterable[str] = (),
        listener: RunListener | None = None,
        planned: Callable[[Any], None] | None = None,
        use_library: bool | None = None,
        stream_plan: bool = False,
    ) -> RunResult:
        """Plan ``goal``, validate, run and record it (a plan given by hand: :meth:`exec_plan`).

        With a store, the goal is stored (``planning``) before the planner is asked, then goes the
        one way every front end's goal goes (:meth:`plan_then_run`): a planning that fails is
        kept as a failed run with the planner's attempts and raised with its ``run_id``; one
        stopped from outside (Ctrl-C) is kept ``interrupted``. ``planned(result)`` is called with
        the planner's result before the run starts; planning counts against ``max_seconds``.
        ``stream_plan``: tool calls start while the planner writes the plan (planvm.engine.streamed)."""
        from planvm.engine.streamed import served_by, streamed_planning

        streamed = streamed_planning(stream_plan, self.with_limits(limits), approve_tools)
        plan = self.planner_call(goal, metadata, planner_kind, use_library, streamed)
        if self.store is not None:
            run_id = await asyncio.to_thread(
                self.open_planning, goal, metadata=metadata, limits=limits, approve_tools=approve_tools, use_library=use_library,
                planner_kind=planner_kind)
            return await self.plan_then_run(run_id, plan, vm=self.with_limits(limits), kind=planner_kind, listener=listener,
                                            planned=planned, streamed=streamed)
        if self.planner_name(planner_kind) == "template":
            self.check_knowledge_base(None)  # the template plan always retrieves: say so before planning
        result, vm, record = await self._plan_within(self.with_limits(limits), plan, streamed=streamed)
        if planned is not None:
            planned(result)
        self.check_knowledge_base(result.plan)
        return await served_by(vm, streamed).arun(
            result.program, goal=goal, metadata=metadata or None, approve_tools=approve_tools, listener=listener, planning=record,
        )

    async def plan_and_run(
        self, run_id: str, goal: str, *, metadata: dict[str, Any] | None = None, planner_kind: str | None = None,
        limits: dict[str, Any] | None = None, listener: RunListener | None = None, use_library: bool | None = None,
        stream_plan: bool = False, approve_tools: Iterable[str] = (),
    ) -> RunResult | None:
        """Go on with a run :meth:`open_planning` stored (the service answered with its id): plan
        it and run it as :meth:`plan_then_run` does. None when its planning failed (kept with the
        run) or it was cancelled meanwhile. ``stream_plan``: tool calls start while the planner
        writes the plan (none of ``approve_tools``: give the run's)."""
        from planvm.engine.streamed import streamed_planning
        from vm.errors import RunStateError

        streamed = streamed_planning(stream_plan, self.with_limits(limits), approve_tools)
        try:
            return await self.plan_then_run(run_id, self.planner_call(goal, metadata, planner_kind, use_library, streamed),
                                            vm=self.with_limits(limits), kind=planner_kind, listener=listener, streamed=streamed)
        except (PlanningError, LLMError, BadInput, RunStateError):
            return None

    def enqueue(
        self, goal: str | None, *, metadata: dict[str, Any] | None = None, plan: Any = None, approve_tools: Iterable[str] = (),
        use_library: bool | None = None, limits: dict[str, Any] | None = None,
    ) -> str:
        """Store a run as ``queued`` for a worker: a plan (validated now) or a goal (planned by the
        worker; ``use_library=False`` or the ``no_library`` option: without the plan library).
        ``approve_tools`` stay with the run, so the worker waits for approval too; so do its
        limits (these, ``limits`` overriding some), which a worker may only lower. Returns its id."""
        store = self._store()
        program = self.vm.compile(plan) if plan is not None else None
        if program is not None:
            self.check_knowledge_base(program.to_data())
        return store.create_run(
            program.to_data() if program is not None else None, goal=goal, metadata=metadata or None,
            limits=self.limits.model_copy(update=limits or {}).model_dump(), status="queued",
            planning={"planner": "given", "reasoning": None} if program is not None else (
                {"no_library": True} if use_library is False or (use_library is None and self.config.no_library) else None),
            approve_tools=sorted(self.approve_tools | frozenset(approve_tools)) or None, tools=self.vm.tool_sources,
        )

    async def exec_plan(
        self, plan: Any, *, goal: str | None = None, metadata: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
        approve_tools: Iterable[str] = (), listener: RunListener | None = None,
    ) -> RunResult:
        """Validate and run a plan given as data, a file path or JSON text (the knowledge base
        checked first, as for a planned goal)."""
        vm = self.with_limits(limits)
        program = await vm.acompile(plan)
        del plan  # checked: the run keeps the program, not the data (whose last reference may be this one)
        if len(program) > LARGE_PLAN:  # a pass over every instruction: not on an event loop
            await asyncio.to_thread(self.check_knowledge_base, program.to_data())
        else:
            self.check_knowledge_base(program.to_data())
        return await vm.arun(program, goal=goal, metadata=metadata or None, approve_tools=approve_tools, listener=listener,
                             planning={"planner": "given", "reasoning": None})

    async def resume(self, run_id: str, *, listener: RunListener | None = None) -> RunResult:
        """Continue a stored run (interrupted, failed or queued) from its last completed step,
        under the limits kept with it. A run stopped while it was being planned is planned again
        (``PlanningError`` when that fails: the run is kept as failed)."""
        store = self._store()
        peek = await asyncio.to_thread(store.get, run_id, steps=False)
        self.for_stored(peek.limits, peek.id)  # tells of given limits that cannot raise the run's
        if peek.plan is not None:
            return await self.vm.aresume(peek.id, listener=listener)
        stored = await asyncio.to_thread(store.claim, peek.id)
        if listener is not None and listener.on_open is not None:
            listener.on_open(stored.id, 0)  # taken: a service answers now, while it is planned
            listener = RunListener(listener.on_start, None, listener.on_step, listener.on_step_start, listener.on_token)
        return await self._plan_stored(stored, listener=listener)

    async def fork(
        self, run_id: str, from_seq: int, *, plan: Any = None, suggestion: str | None = None, listener: RunListener | None = None,
        planning: dict[str, Any] | None = None,
    ) -> RunResult:
        """A new run reusing ``run_id``'s steps before ``from_seq``, going on with ``plan`` (how it
        was made: ``planning``), or with a re-plan the planner writes as ``suggestion`` asks (its
        planning kept with the new run)."""
        if (plan is None) == (suggestion is None):
            raise BadInput("give either a plan or a suggestion for the fork")
        run_id = await asyncio.to_thread(self._store().resolve, run_id)
        self.for_stored((await asyncio.to_thread(self._store().get, run_id, steps=False)).limits, run_id)
        if suggestion is None:
            return await self.vm.afork(run_id, from_seq, plan, listener=listener, planning=planning)
        replanned = await in_daemon_thread(lambda: self.replan(run_id, from_seq, suggestion))
        return await self.vm.afork(run_id, from_seq, replanned.plan, listener=listener,
                                   planning={**replanned.record(), "suggestion": suggestion})

    async def approve(
        self, run_id: str, seq_no: int, approved: bool = True, *, tool_params: dict[str, Any] | None = None,
        reason: str | None = None, listener: RunListener | None = None,
    ) -> RunResult:
        """Run (or reject) the call a waiting run waits for, and continue the run (under the
        limits kept with it)."""
        self.for_stored((await asyncio.to_thread(self._store().get, run_id, steps=False)).limits, run_id)
        return await self.vm.aapprove(run_id, seq_no, approved, tool_params=tool_params, reason=reason, listener=listener)

    def cancel(self, run_id: str, reason: str | None = None) -> str:
        """Cancel a run wherever it executes (its full id is returned); ``reason`` is kept with it
        as its error (default: ``cancelled on request``, whichever front end asked)."""
        return self._store().cancel(run_id, reason or CANCELLED)

    def delete(self, run_id: str, *, force: bool = False) -> list[str]:
        """Delete a run with its steps and its forks (the deleted ids, the run first); a run that
        may be executing is refused unless ``force``."""
        return self._store().delete_run(run_id, force=force)

    def import_run(self, document: Any) -> str:
        """Store a run exported by ``planvm runs export`` (its JSON document, parsed) under its id."""
        from vm import StoredRun

        return self._store().import_run(StoredRun.from_dict(document))

    async def replay(self, run_id: str) -> Any:
        """Re-execute a stored run offline from its record (a :class:`vm.ReplayReport`)."""
        from vm import areplay

        return await areplay(await asyncio.to_thread(self._reader().get, run_id))

    def replay_live(self, run: Any) -> Any:
        """Re-execute a stored run (a :class:`vm.StoredRun`) against this engine's real tools and
        models, and compare each step with its record."""
        from vm import replay_live

        return replay_live(run, self.vm)

    async def run_queued(self, run_id: str) -> RunResult | None:
        """What a worker does with a run it claimed: plan it when it is a goal (without the plan
        library when it was queued so), check it, run it under the limits kept with it. A
        planning that fails ends the run as failed, with the planner's attempts (None is
        returned); a run stopped meanwhile goes back to the queue."""
        from vm.errors import RunStateError

        worker = self.as_role("worker")
        stored = await asyncio.to_thread(worker._store().get, run_id)
        if stored.plan is not None:
            return await worker.vm.aresume(run_id, claimed=True)
        try:  # a queued goal, or one whose planner died: planned (again) here
            return await worker._plan_stored(stored)
        except (PlanningError, LLMError, BadInput, RunStateError):
            return None

    async def _plan_stored(self, stored: Any, *, listener: RunListener | None = None) -> RunResult:
        """Plan a stored goal this process holds (without the plan library when it was stored so)
        within what is left of its max_seconds, then run it (:meth:`plan_then_run`)."""
        library = False if (stored.planning or {}).get("no_library") else None
        return await self.plan_then_run(
            stored.id, self.planner_call(stored.goal or "", stored.metadata, None, library), vm=self.for_stored(stored.limits, stored.id),
            spent=stored.active_seconds(), listener=listener)

    # --- checking -------------------------------------------------------------------------------

    def validate(self, plan: Any, *, allow_tools: Iterable[str] | None = None, limits: dict[str, Any] | None = None) -> list[Any]:
        """Every static problem of ``plan`` (data, JSON text or a file path) against these tools,
        the tools runs may call (the configured ``allow_tools``, narrowed by ``allow_tools``) and
        the plan's size and nesting limits (these, lowered by ``limits``); empty when it would
        run. ``PlanError`` for input that is not a plan at all."""
        from vm.validate import validate_plan

        allowed: set[str] | None = set(self.config.allow_tools) if self.config.allow_tools else None
        if allow_tools is not None:
            allowed = set(allow_tools) if allowed is None else allowed & set(allow_tools)
        bounds = self.limits.model_copy(update=limits) if limits else self.limits
        return validate_plan(plan, self.registry, allowed_tools=allowed, limits=bounds)[1]

    def close(self) -> None:
        if self._borrowed:
            return  # (a role of another engine: that one's close releases what they share)
        for other in self._namespaces.values():
            other.close()
        if "vm" in self.__dict__:
            self.vm.close()
        for store in (None if self._borrowed_store else self.store, self._read_store):
            if store is not None:
                store.close()
        if "registry" in self.__dict__:
            self.registry.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shown(value: Any) -> str:
    return "off" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
