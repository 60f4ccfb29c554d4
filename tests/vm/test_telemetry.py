"""OpenTelemetry spans, captured with the SDK's in-memory exporter, and once sent by the OTLP/HTTP
exporter of a real `planvm exec` process to a local receiver that decodes the protobuf payload.
The only fake is ScriptedLLM (an LLM at the edge)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import ROOT, ScriptedLLM, assign, call, jmp, make_registry
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tools import ToolRegistry, tool
from vm import VM, CallContext, Completion, RunStore, telemetry


@tool
def summarise(text: str, ctx: CallContext) -> str:
    """Ask the run's LLM for a summary (a sync tool: it runs in a worker thread)."""
    return ctx.llm.complete(f"Summarise: {text}").text


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use(provider)
    try:
        yield exporter
    finally:
        telemetry.use(False)


def test_spans_for_the_run_its_steps_tool_calls_and_llm_exchanges(spans, tmp_path):
    registry = make_registry()
    registry.register(summarise)
    llm = ScriptedLLM(
        Completion("A short summary.", model="answer-7b", prompt_tokens=12, completion_tokens=4),
        Completion('{"result": true, "explanation": "yes"}', model="cond-1b", prompt_tokens=20, completion_tokens=6),
    )
    plan = [
        call(0, "summarise", ["summary"], text="a long text"),
        jmp(1, condition_prompt="Is ${summary} short?", jump_if_true=2, jump_if_false=3),
        call(2, "add", ["final_answer"], a=1, b=2),
        assign(3, final_answer="never"),
    ]
    with VM(registry, llm=llm, store=RunStore(tmp_path / "runs.sqlite")) as vm:
        result = vm.run(plan)
    assert result.ok
    by_name = {s.name: s for s in spans.get_finished_spans()}
    run = by_name["planvm.run"]
    assert run.parent is None and run.attributes["planvm.run_id"] == result.run_id and run.attributes["planvm.status"] == "completed"
    steps = [s for s in spans.get_finished_spans() if s.name.startswith("planvm.step")]
    assert [(s.attributes["planvm.seq_no"], s.attributes["planvm.instruction.type"]) for s in steps] == [
        (0, "calling"), (1, "jmp"), (2, "calling")]
    assert all(s.parent.span_id == run.context.span_id and s.attributes["planvm.run_id"] == result.run_id for s in steps)
    tool_span = by_name["execute_tool summarise"]
    assert tool_span.parent.span_id == steps[0].context.span_id and tool_span.attributes["gen_ai.tool.name"] == "summarise"
    # The sync tool ran in a thread, and its LLM exchange is still the tool call's child.
    chat = next(s for s in spans.get_finished_spans() if s.name.startswith("chat") and s.attributes["planvm.role"] == "answer")
    assert chat.parent.span_id == tool_span.context.span_id
    assert chat.attributes["gen_ai.operation.name"] == "chat" and chat.attributes["gen_ai.response.model"] == "answer-7b"
    assert (chat.attributes["gen_ai.usage.input_tokens"], chat.attributes["gen_ai.usage.output_tokens"]) == (12, 4)
    condition = next(s for s in spans.get_finished_spans() if s.name.startswith("chat") and s.attributes["planvm.role"] == "condition")
    assert condition.parent.span_id == steps[1].context.span_id and condition.attributes["gen_ai.usage.input_tokens"] == 20


def test_a_failing_tool_marks_its_spans_as_errors(spans):
    with VM(make_registry()) as vm:
        result = vm.run([call(0, "fail", ["final_answer"], message="the disk is full")])
    assert result.status == "failed"
    by_name = {s.name: s for s in spans.get_finished_spans()}
    tool_span, step, run = by_name["execute_tool fail"], by_name["planvm.step calling"], by_name["planvm.run"]
    assert tool_span.status.status_code == StatusCode.ERROR and "the disk is full" in tool_span.status.description
    exceptions = [e for e in tool_span.events if e.name == "exception"]
    assert len(exceptions) == 1 and "ValueError" in exceptions[0].attributes["exception.type"]  # recorded once
    assert tool_span.attributes["error.type"] == "ValueError"
    assert step.status.status_code == StatusCode.ERROR and step.attributes["error.type"] == "ToolFailed"
    assert run.status.status_code == StatusCode.ERROR and run.attributes["planvm.status"] == "failed"


def test_tracing_off_makes_no_spans_and_imports_no_opentelemetry():
    code = (
        "import sys; from vm import VM; from tools import ToolRegistry, tool\n"
        "@tool\ndef one() -> int:\n    return 1\n"
        "r = VM(ToolRegistry([one])).run([{'seq_no': 0, 'type': 'calling', 'parameters': {'tool_name': 'one', 'tool_params': {}, "
        "'output_vars': ['final_answer']}}])\n"
        "from vm import telemetry\n"
        "print(r.final_answer, telemetry.tracer is None, any(m.startswith('opentelemetry') for m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.split() == ["1", "True", "False"], out.stderr


class Receiver:
    """A local OTLP/HTTP endpoint: keeps each decoded ExportTraceServiceRequest."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.requests: list[Any] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.requests.append(request)
                receiver.paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def spans(self) -> list[tuple[Any, Any]]:
        return [(rs.resource, span) for r in self.requests for rs in r.resource_spans for ss in rs.scope_spans for span in ss.spans]


def test_a_planvm_process_exports_its_spans_over_otlp_http(tmp_path):
    receiver = Receiver()
    try:
        plan = tmp_path / "plan.json"
        plan.write_text(json.dumps([assign(0, total=3), assign(1, final_answer="total ${total}")]))
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "planvm-under-test"}
        out = subprocess.run([sys.executable, "-m", "planvm", "exec", str(plan), "--no-store"], cwd=ROOT, capture_output=True,
                             text=True, env=env, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == "total 3", out.stderr
        assert receiver.paths and set(receiver.paths) == {"/v1/traces"}
        spans = receiver.spans()
        names = sorted(span.name for _resource, span in spans)
        assert names == ["planvm.run", "planvm.step assign", "planvm.step assign"]
        resource = spans[0][0]
        service = {a.key: a.value.string_value for a in resource.attributes}["service.name"]
        assert service == "planvm-under-test"
        run = next(span for _r, span in spans if span.name == "planvm.run")
        assert all(span.parent_span_id == run.span_id for _r, span in spans if span.name != "planvm.run")
    finally:
        receiver.httpd.shutdown()


def test_the_registry_tool_type_is_traced_for_async_tools_too(spans):
    @tool
    async def later(x: int) -> int:
        """Return x (async)."""
        return x

    with VM(ToolRegistry([later])) as vm:
        assert vm.run([call(0, "later", ["final_answer"], x=7)]).final_answer == 7
    names = [s.name for s in spans.get_finished_spans()]
    assert names == ["execute_tool later", "planvm.step calling", "planvm.run"]


def test_console_spans_go_to_stderr_and_leave_the_json_answer_alone(tmp_path):
    from conftest import planvm

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([assign(0, final_answer="traced")]))
    out = planvm("exec", str(plan), "--json", env={"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "planvm-test",
                                                   "PLANVM_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["final_answer"] == "traced"  # stdout is one JSON document
    assert '"name": "planvm.run"' in out.stderr or "planvm.run" in out.stderr
