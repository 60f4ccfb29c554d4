"""``planvm.Client``: the service (``planvm serve``) from Python, over HTTP.

The same operations and the same shapes as the engine in-process: ``run`` answers a
:class:`~planvm.engine.shapes.RunOutcome`, ``get_run`` a :class:`~planvm.engine.shapes.RunDetail`,
``plan`` a :class:`~planvm.engine.shapes.PlanView`; ``events`` follows a run's event stream. An
error the service answers is raised as :class:`ServiceError` (a :class:`vm.PlanVMError`) with the
service's status, error type, message and, for a plan, its problems::

    from planvm import Client

    with Client("http://127.0.0.1:8000", token="…") as client:
        outcome = client.run("When does a run end?")
        print(outcome.status, outcome.final_answer)

Needs ``httpx`` and ``httpx-sse`` (``pip install 'planvm[client]'``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vm.errors import PlanVMError

__all__ = ["Client", "ServiceError"]


class ServiceError(PlanVMError):
    """An error the service answered: ``status`` (HTTP), ``kind`` (its error type, e.g.
    ``RunNotFound``), ``problems`` (a plan's problems, when it has them)."""

    def __init__(self, status: int, kind: str, message: str, problems: list[str] | None = None) -> None:
        super().__init__(f"{message} (HTTP {status}, {kind})")
        self.status = status
        self.kind = kind
        self.problems = problems or []


class Client:
    """A client of one planvm service at ``url`` (``token``: its bearer token, if it has one)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, token: str | None = None, timeout: float = 60.0,
                 transport: Any = None) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)

    # --- runs ---------------------------------------------------------------------------------

    def run(self, goal: str | None = None, *, plan: list[Any] | None = None, metadata: dict[str, Any] | None = None,
            limits: dict[str, Any] | None = None, approve_tools: list[str] | None = None, planner: str | None = None,
            library: bool | None = None, wait: bool = True) -> Any:
        """Plan ``goal`` (or run ``plan``) on the service. ``wait``: answer the run's
        :class:`RunOutcome` once it ends (or waits for an approval); else ``{"run_id", "status"}``
        as soon as it started."""
        from planvm.engine.shapes import RunOutcome

        body = {k: v for k, v in {"goal": goal, "plan": plan, "metadata": metadata, "limits": limits, "planner": planner,
                                  "library": library, "approve_tools": approve_tools}.items() if v is not None}
        data = self._call("POST", "/v1/runs", json=body, params={"wait": "true"} if wait else None)
        return RunOutcome(**data) if wait else data

    def get_run(self, run_id: str, *, steps: bool = False) -> Any:
        """The run (a :class:`RunDetail`; ``steps``: with its trace)."""
        from planvm.engine.shapes import RunDetail

        return RunDetail(**self._call("GET", f"/v1/runs/{run_id}", params={"steps": "true"} if steps else None))

    def runs(self, *, status: str | None = None, query: str | None = None, page_size: int = 50) -> Iterator[Any]:
        """Every run, newest first (:class:`RunSummary`), fetched a page at a time."""
        from planvm.engine.shapes import RunSummary

        cursor = None
        while True:
            params = {k: v for k, v in {"status": status, "q": query, "limit": page_size, "cursor": cursor}.items() if v is not None}
            page = self._call("GET", "/v1/runs", params=params)
            for row in page["runs"]:
                yield RunSummary(**row)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel(self, run_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/runs/{run_id}/cancel")

    def resume(self, run_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/runs/{run_id}/resume")

    def approve(self, run_id: str, seq_no: int, *, approved: bool = True, tool_params: dict[str, Any] | None = None,
                reason: str | None = None) -> dict[str, Any]:
        """Approve (or, with ``approved=False``, reject) the call the run waits for at ``seq_no``."""
        body = {k: v for k, v in {"seq_no": seq_no, "approved": approved, "tool_params": tool_params, "reason": reason}.items()
                if v is not None}
        return self._call("POST", f"/v1/runs/{run_id}/approve", json=body)

    def fork(self, run_id: str, from_seq: int, *, plan: list[Any] | None = None, suggestion: str | None = None) -> dict[str, Any]:
        body = {k: v for k, v in {"from_seq": from_seq, "plan": plan, "suggestion": suggestion}.items() if v is not None}
        return self._call("POST", f"/v1/runs/{run_id}/fork", json=body)

    def events(self, run_id: str, *, last_event_id: str | None = None) -> Iterator[dict[str, Any]]:
        """The run's events as they come (``{"id", "event", "data"}``), until its ``done``."""
        import json

        from httpx_sse import connect_sse

        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        with connect_sse(self._http, "GET", f"/v1/runs/{run_id}/events", headers=headers, timeout=None) as source:
            if source.response.status_code >= 400:
                source.response.read()
                self._raise(source.response)
            for sse in source.iter_sse():
                event = {"id": sse.id, "event": sse.event, "data": json.loads(sse.data) if sse.data else None}
                yield event
                if sse.event == "done":
                    return

    # --- plans --------------------------------------------------------------------------------

    def plan(self, goal: str, *, metadata: dict[str, Any] | None = None, planner: str | None = None) -> Any:
        """A plan for ``goal``, not run (a :class:`PlanView`)."""
        from planvm.engine.shapes import PlanView

        body = {k: v for k, v in {"goal": goal, "metadata": metadata, "planner": planner}.items() if v is not None}
        return PlanView(**self._call("POST", "/v1/plans", json=body))

    def validate(self, plan: list[Any]) -> dict[str, Any]:
        """Check a plan against the service's tools: ``{"valid": bool, "problems": [...]}``."""
        return self._call("POST", "/v1/validate", json={"plan": plan})

    # --- plumbing -----------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceError(0, "Unreachable", f"the service at {self._http.base_url} cannot be reached ({type(exc).__name__}); "
                                                 f"is `planvm serve` running there?") from exc
        if response.status_code >= 400:
            self._raise(response)
        return response.json()

    @staticmethod
    def _raise(response: Any) -> None:
        try:
            error = response.json().get("error") or {}
        except ValueError:
            error = {}
        message = error.get("message") or response.text[:300] or response.reason_phrase
        raise ServiceError(response.status_code, error.get("type") or "HTTPError", message, error.get("problems"))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
