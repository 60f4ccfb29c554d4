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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from planvm.engine.config import EngineConfig
from planvm.engine.tools import make_registry, tool_sources
from vm import VM, Limits, RunListener, RunResult
from vm.errors import BadInput, PlanVMError

__all__ = ["Engine"]


def _in_daemon_thread(work: Callable[[], Any]) -> asyncio.Future[Any]:
    """``work()`` in a thread of its own that does not hold the process open: a planner call cut
    off by the run's deadline (or Ctrl-C) is left to end by itself while the command exits, and
    sends no request after that (tools.abandon)."""
    import threading

    from tools.abandon import abandoned_when

    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    given_up = threading.Event()
    future.add_done_callback(lambda done: given_up.set() if done.cancelled() else None)

    def settle(result: Any, error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)

    def run() -> None:
        try:
            with abandoned_when(given_up):
                outcome, error = work(), None
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, outcome, error)
        except RuntimeError:
            pass  # the loop is gone: nobody waits for this any more

    threading.Thread(target=run, name="planvm-planner", daemon=True).start()
    return future


class Engine:
    """Settings resolved once: tools, store, model roles, limits. Cheap to share between runs.

    ``config``: an :class:`EngineConfig`, or a front end's options (``store_path``, ``kb_path``,
    ``plugins``, ``max_steps``…) laid over ``PLANVM_*`` variables and ``planvm.toml``.
    ``record=False`` keeps runs out of the store. ``notify`` receives notes for the user (a planner
    chosen for them, a missing optional package).
    """

    def __init__(
        self, config: EngineConfig | Mapping[str, Any] | None = None, *, record: bool = True,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        from tools.backends import make_llms
        from vm import RunStore

        self.config = config if isinstance(config, EngineConfig) else EngineConfig.load(config)
        self.settings = self.config
        self.notify = notify or (lambda _message: None)
        self._noted: set[str] = set()
        self.registry = make_registry(self.config)
        self.llms = make_llms(self.config, ("planner", "answer", "condition", "judge"))
        self.limits = Limits(**self.config.limits.given())
        self.store = RunStore(self.config.store, lease_seconds=self.config.lease_seconds) if record else None
        self.approve_tools = frozenset(self.config.approve_tools)
        self._library: Any = None
        self._library_store: Any = None  # a store opened only to read the library (when runs are not recorded)
        self.vm = VM(
            self.registry,
            llm=self.llms["answer"],
            condition_llm=self.llms["condition"],
            limits=self.limits,
            allowed_tools=self.config.allow_tools or None,
            store=self.store,
            concurrency=self.config.concurrency,
            approve_tools=self.approve_tools,
        )
        self.vm.tool_sources = tool_sources(self.config)

    def _note(self, message: str) -> None:
        """Tell the user once per engine (a service answering many requests says it once)."""
        if message not in self._noted:
            self._noted.add(message)
            self.notify(message)

    def with_limits(self, overrides: dict[str, Any] | None) -> VM:
        """The engine's VM, or one sharing its tools, store and threads under other limits."""
        if not overrides:
            return self.vm
        return self.vm.derive(limits=self.limits.model_copy(update=overrides))

    def for_stored(self, kept: dict[str, Any] | None, run_id: str) -> VM:
        """The VM to go on with the stored run ``run_id``: under the limits kept with it, lowered
        (never raised) by the limits this engine was given (flags, ``PLANVM_MAX_*``,
        ``[limits]``). A given limit above the run's is not applied, and the user is told so."""
        from vm.limits import continuing

        _limits, raised = continuing(kept, self.limits)
        for name, (asked, mine) in sorted(raised.items()):
            self._note(f"run {run_id} keeps its own {name} of {_shown(mine)}; the {_shown(asked)} given now can only lower a "
                       f"run's limits, not raise them (run its plan again as a new run for more)")
        return self.vm.for_run(kept)

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
            from vm import RunStore
            from vm.store import store_missing

            store = self.store
            if store is None:
                if store_missing(self.config.store):
                    return None
                try:
                    store = self._library_store = RunStore(self.config.store, readonly=True)
                except PlanVMError:
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

        ``planned(result)`` is called with the planner's result before the run starts. Planning
        counts against the run's ``max_seconds``. With a store, the goal is stored (``planning``)
        before the planner is asked: a planning stopped from outside (Ctrl-C) leaves it
        ``interrupted`` (resuming it plans it again); ``PlanningError``, ``LLMError`` or
        ``BadInput`` (the plan needs a knowledge base that is not there) leave it failed, with the
        planner's attempts (its id on the error as ``run_id``). ``stream_plan``: tool calls start
        while the planner writes the plan (planvm.engine.streamed).
        """
        from planvm.engine.streamed import served_by, streamed_planning
        from vm.errors import LLMError, PlanningError

        kind = planner_kind or self.config.planner_kind
        if kind == "template" or (kind == "auto" and not self.has_model("planner")):
            self.check_knowledge_base(None)  # the template plan always retrieves: say so before planning
        if self.store is not None:
            # Stored before the planner is asked, so a planning cut short (Ctrl-C) is kept, as
            # interrupted, and resuming it plans it again.
            run_id = self.open_planning(goal, metadata=metadata, limits=limits, approve_tools=approve_tools, use_library=use_library)
            streamed = streamed_planning(stream_plan, self.with_limits(limits), approve_tools)
            try:
                result, _vm, record = await self._plan_within(self.with_limits(limits), goal, metadata, planner_kind, use_library,
                                                              streamed=streamed)
                self.check_knowledge_base(result.plan)
            except (PlanningError, LLMError, BadInput) as exc:
                await asyncio.to_thread(self._fail_planning, run_id, exc)
                exc.run_id = run_id  # type: ignore[attr-defined]
                raise
            except BaseException:
                self._interrupt_planning(run_id)
                raise
            if planned is not None:
                planned(result)
            await asyncio.to_thread(self._store().set_plan, run_id, result.plan, record)
            return await served_by(self.vm, streamed).aresume(run_id, claimed=True, listener=listener)
        streamed = streamed_planning(stream_plan, self.with_limits(limits), approve_tools)
        result, vm, record = await self._plan_within(self.with_limits(limits), goal, metadata, planner_kind, use_library,
                                                     streamed=streamed)
        if planned is not None:
            planned(result)
        self.check_knowledge_base(result.plan)
        return await served_by(vm, streamed).arun(
            result.program, goal=goal, metadata=metadata or None, approve_tools=approve_tools, listener=listener, planning=record,
        )

    def _fail_planning(self, run_id: str, exc: Exception) -> None:
        """End a run this process was planning as failed, with the planner's attempts (left as it
        is when it was cancelled meanwhile)."""
        from vm.errors import RunStateError

        try:
            self._store().fail_planning(run_id, f"planning failed: {exc}", self._planning_failure(exc))
        except RunStateError:
            pass  # cancelled while it was being planned
        except PlanVMError:
            pass  # the store is away: the error itself is what matters

    def _interrupt_planning(self, run_id: str) -> None:
        """Keep a planning stopped from outside (Ctrl-C, the server stopping) as ``interrupted``:
        resuming it plans it again. Not in a thread: the task may be being cancelled."""
        try:
            self._store().finish(run_id, "interrupted", error="interrupted while its plan was being written; resume it to plan it again")
        except PlanVMError:
            pass  # cancelled meanwhile, or the store is away: a later start marks it abandoned

    def open_planning(
        self, goal: str, *, metadata: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
        approve_tools: Iterable[str] = (), use_library: bool | None = None,
    ) -> str:
        """Store ``goal`` as a run in status ``planning``, held by this process, and return its id
        at once (the service answers with it before the planner has said a word);
        :meth:`plan_and_run` goes on with it."""
        store = self._store()
        if not self.has_model("planner"):
            self.check_knowledge_base(None)  # the template plan always retrieves: say so now
        return store.create_run(
            None, goal=goal, metadata=metadata or None, limits=self.limits.model_copy(update=limits or {}).model_dump(),
            approve_tools=sorted(self.approve_tools | frozenset(approve_tools)) or None, status="planning", tools=self.vm.tool_sources,
            planning={"no_library": True} if use_library is False else None,
        )

    async def plan_and_run(
        self, run_id: str, goal: str, *, metadata: dict[str, Any] | None = None, planner_kind: str | None = None,
        limits: dict[str, Any] | None = None, listener: RunListener | None = None, use_library: bool | None = None,
        stream_plan: bool = False, approve_tools: Iterable[str] = (),
    ) -> RunResult | None:
        """Plan a run :meth:`open_planning` stored, then run it; planning counts against its
        ``max_seconds``. A planning that fails ends the run as failed, with its attempts (None is
        returned); a run cancelled meanwhile is left as it is. ``stream_plan``: tool calls start
        while the planner writes the plan (none of ``approve_tools``: give the run's)."""
        from planvm.engine.streamed import served_by, streamed_planning
        from vm.errors import LLMError, PlanningError, RunCancelled, RunStateError

        streamed = streamed_planning(stream_plan, self.with_limits(limits), approve_tools)
        try:
            result, _vm, record = await self._plan_within(self.with_limits(limits), goal, metadata, planner_kind, use_library,
                                                          streamed=streamed)
            self.check_knowledge_base(result.plan)
        except (PlanningError, LLMError, BadInput) as exc:
            await asyncio.to_thread(self._fail_planning, run_id, exc)
            return None
        except BaseException:
            self._interrupt_planning(run_id)  # the server stopping: resuming it plans it again
            raise
        try:
            await asyncio.to_thread(self._store().set_plan, run_id, result.plan, record)
        except RunCancelled:
            return None
        try:  # under the limits kept with it; the time planning took counts against its max_seconds
            return await served_by(self.vm, streamed).aresume(run_id, claimed=True, listener=listener)
        except RunStateError:
            return None  # cancelled between its plan and its first step

    async def _plan_within(
        self, vm: VM, goal: str, metadata: dict[str, Any] | None, planner_kind: str | None, use_library: bool | None,
        spent: float = 0.0, *, streamed: Any = None,
    ) -> tuple[Any, VM, dict[str, Any]]:
        """Plan ``goal`` within ``vm``'s wall-clock budget, less the ``spent`` seconds the run used
        before (``PlanningError`` past it); return the plan, the VM to run it with (not recorded:
        its budget is what planning left) and the planning's record, with the seconds it took
        (a recorded run counts them against its max_seconds)."""
        import time

        from vm.errors import PlanningError

        budget = vm.limits.max_seconds
        began = time.monotonic()
        try:
            result = await asyncio.wait_for(
                _in_daemon_thread(lambda: self.plan(goal, metadata, planner_kind, use_library=use_library, streamed=streamed)),
                None if budget is None else max(budget - spent, 0.001))
        except TimeoutError:
            raise PlanningError(
                f"planning took more than the run's {budget:g} s (--max-seconds / max_seconds, which planning counts "
                f"against); raise it, or check the planner's model server", attempts=[]) from None
        finally:
            if streamed is not None:
                streamed.finish()  # nothing more starts early; the calls started go on for the run to take
        took = time.monotonic() - began
        if budget is not None:  # what planning used is gone from the run's wall-clock budget
            left = max(budget - took, 0.001)
            vm = vm.derive(limits=vm.limits.model_copy(update={"max_seconds": left}), keep=vm.kept_limits or vm.limits)
        record = {**result.record(), "seconds": round(took, 3)}
        return result, vm, (streamed.annotate(record) if streamed is not None else record)

    def _planning_failure(self, exc: Exception) -> dict[str, Any]:
        """The planning record of a planning that failed: planner, attempts, error."""
        attempts = [a.to_dict() for a in getattr(exc, "attempts", None) or ()]
        return {"planner": "llm" if self.has_model("planner") else "template", "attempts": attempts, "error": str(exc)}

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
        return await self._plan_held(stored, listener=listener, resumed=True)

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
        replanned = await _in_daemon_thread(lambda: self.replan(run_id, from_seq, suggestion))
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

    def cancel(self, run_id: str, reason: str = "cancelled") -> str:
        """Cancel a run wherever it executes (its full id is returned)."""
        return self._store().cancel(run_id, reason)

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

        return await areplay(await asyncio.to_thread(self._store().get, run_id))

    async def run_queued(self, run_id: str) -> RunResult | None:
        """What a worker does with a run it claimed: plan it when it is a goal (without the plan
        library when it was queued so), check it, run it under the limits kept with it. A
        planning that fails ends the run as failed (None is returned)."""
        store = self._store()
        stored = await asyncio.to_thread(store.get, run_id)
        if stored.plan is None:  # a queued goal, or one whose planner died: planned (again) here
            return await self._plan_held(stored)
        return await self.vm.aresume(run_id, claimed=True)

    async def _plan_held(self, stored: Any, *, listener: RunListener | None = None, resumed: bool = False) -> RunResult | None:
        """Plan a stored goal this process holds (without the plan library when it was stored
        so), within what is left of its max_seconds, then run it under the limits kept with it.
        A planning that fails ends the run as failed: None is returned (``resumed``: the error
        is raised, its ``run_id`` set; a planning stopped from outside is kept as interrupted. A
        worker's stays running: the worker gives it back to the queue)."""
        from vm.errors import LLMError, PlanningError

        store = self._store()
        library = False if (stored.planning or {}).get("no_library") else None
        try:
            planned, _vm, record = await self._plan_within(
                self.for_stored(stored.limits, stored.id), stored.goal or "", stored.metadata, None, library, stored.active_seconds())
            self.check_knowledge_base(planned.plan)
        except (PlanningError, LLMError, BadInput) as exc:
            await asyncio.to_thread(self._fail_planning, stored.id, exc)
            if resumed:
                exc.run_id = stored.id  # type: ignore[attr-defined]
                raise
            return None
        except BaseException:
            if resumed:
                self._interrupt_planning(stored.id)
            raise
        await asyncio.to_thread(store.set_plan, stored.id, planned.plan, record)
        return await self.vm.aresume(stored.id, claimed=True, listener=listener)

    # --- reading --------------------------------------------------------------------------------

    def get_run(self, run_id: str, *, steps: bool = False, step: int | None = None) -> Any:
        """A stored run as every front end shows it (a :class:`RunDetail`); ``steps``: with its
        trace; ``step``: with the variables after that trace position."""
        from planvm.engine.shapes import RunDetail

        store = self._store()
        run = store.get(run_id)
        if step is not None and not 0 <= step < len(run.steps):
            raise BadInput(f"run '{run.id}' has {len(run.steps)} steps (idx 0 to {len(run.steps) - 1}); ask for one of those")
        return RunDetail.of(run, lineage=store.lineage(run.id), children=store.children(run.id), trace=steps, step=step)

    def outcome(self, run_id: str) -> Any:
        """How a stored run ended (a :class:`RunOutcome`)."""
        from planvm.engine.shapes import RunOutcome

        return RunOutcome.from_stored(self._store().get(run_id))

    def _store(self) -> Any:
        if self.store is None:
            raise PlanVMError("this command does not record runs")
        return self.store

    def close(self) -> None:
        self.vm.close()
        for store in (self.store, self._library_store):
            if store is not None:
                store.close()
        self.registry.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shown(value: Any) -> str:
    return "off" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
