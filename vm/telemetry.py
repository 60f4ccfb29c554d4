"""OpenTelemetry traces: a span for each run, step, tool call and LLM exchange.

Off unless configured, and then free: every hook first checks :data:`tracer`, which stays None.
Configuration is OpenTelemetry's own environment variables, read once when the first VM is made:
``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, ``none``; ``otlp`` when only an endpoint is set),
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (OTLP over HTTP with
protobuf), ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` and
``OTEL_SDK_DISABLED``. An application that sets up OpenTelemetry itself calls :func:`use` with
its tracer provider (or none, for the global one).

LLM spans follow the GenAI semantic conventions (``gen_ai.operation.name`` ``chat``, request and
response model, ``gen_ai.usage.input_tokens`` / ``output_tokens``); tool spans are
``execute_tool`` spans with ``gen_ai.tool.name``. planvm's own attributes: ``planvm.run_id``,
``planvm.seq_no``, ``planvm.instruction.type``, ``planvm.tool``, ``planvm.role``. A failed step,
tool call or exchange sets its span's status to error and records the exception.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["configure_from_env", "fail", "llm_span", "span", "tracer", "use"]

log = logging.getLogger("planvm.telemetry")

#: The tracer spans are made with; None while tracing is off.
tracer: Any = None
_checked = False


def use(provider: Any = None) -> None:
    """Trace with ``provider`` (an ``opentelemetry.sdk.trace.TracerProvider``; None: the global
    one). ``use(False)`` turns tracing off again."""
    global tracer, _checked
    _checked = True
    if provider is False:
        tracer = None
        return
    from importlib.metadata import PackageNotFoundError, version

    from opentelemetry import trace

    try:
        release = version("planvm")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
        release = None
    tracer = (provider or trace.get_tracer_provider()).get_tracer("planvm", release)


def configure_from_env() -> None:
    """Turn tracing on when the standard ``OTEL_*`` variables ask for it (once per process)."""
    global _checked
    if _checked:
        return
    _checked = True
    exporters = [e.strip() for e in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" or exporters == ["none"]:
        return
    if not exporters and not endpoint:
        return
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
        )
    except ImportError:
        log.warning("OTEL_* variables ask for traces, but OpenTelemetry is not installed: pip install 'planvm[otel]'")
        return
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "planvm"}))
    for name in exporters or ["otlp"]:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            # Spans go to stderr: stdout carries the answer (and --json must stay one JSON document).
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
        elif name != "none":
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported here (otlp, console or none); it is ignored", name)
    trace.set_tracer_provider(provider)
    use(provider)


_OFF = contextlib.nullcontext()


def span(name: str, attributes: dict[str, Any] | None = None) -> Any:
    """A context manager for a span (the current one's child) that yields it, or None when
    tracing is off. An exception raised through it marks it failed (:func:`fail`)."""
    if tracer is None:
        return _OFF
    return _span(name, {k: v for k, v in (attributes or {}).items() if v is not None})


@contextlib.contextmanager
def _span(name: str, attributes: dict[str, Any]) -> Iterator[Any]:
    # The SDK's own exception recording is off: fail() records once, with error.type as well.
    with tracer.start_as_current_span(name, attributes=attributes, record_exception=False, set_status_on_exception=False) as current:
        try:
            yield current
        except BaseException as exc:
            fail(current, exc)
            raise


def fail(current: Any, error: BaseException | str) -> None:
    """Mark ``current`` (a span, or None) as failed with ``error``."""
    if current is None:
        return
    from opentelemetry.trace import Status, StatusCode

    from vm.redact import redact

    if isinstance(error, BaseException):
        # As the SDK's record_exception, with the text masked (keys never leave in a trace).
        import traceback

        current.add_event("exception", {
            "exception.type": type(error).__qualname__,
            "exception.message": redact(str(error)),
            "exception.stacktrace": redact("".join(traceback.format_exception(error))),
        })
        current.set_attribute("error.type", type(error).__name__)
    current.set_status(Status(StatusCode.ERROR, redact(str(error))[:1000]))


def llm_span(role: str, model: Any, seq_no: int | None = None) -> Any:
    """A GenAI ``chat`` span around one LLM exchange; :func:`record_reply` fills in the usage."""
    return span(f"chat {model}" if isinstance(model, str) and model else "chat", {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": model if isinstance(model, str) else None,
        "planvm.role": role,
        "planvm.seq_no": seq_no,
    })


def record_reply(current: Any, reply: Any) -> None:
    """The model and token counts of ``reply`` (a ``Completion``) on an LLM span."""
    if current is None:
        return
    for key, value in (("gen_ai.response.model", getattr(reply, "model", None)),
                       ("gen_ai.usage.input_tokens", getattr(reply, "prompt_tokens", None)),
                       ("gen_ai.usage.output_tokens", getattr(reply, "completion_tokens", None))):
        if value is not None:
            current.set_attribute(key, value)
