"""The OpenTelemetry SDK side of penny.tracing: the tracer provider and the exporter that scrubs card
numbers and secrets out of every span. Imported only when tracing is on (penny.tracing imports it lazily).

Everything is imported here, at module level, on purpose: workflow spans are recorded from inside the
workflow sandbox (through the interceptor's extern function), and with a synchronous span processor the
export runs there too, where a function-level import would go through the sandbox's importer and fail.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import unquote_plus

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status
from opentelemetry.util.types import Attributes, AttributeValue

from penny.logs import scrub


def new_tracer_provider(service_name: str, exporter: SpanExporter, *, batched: bool) -> TracerProvider:
    """See penny.tracing.new_tracer_provider."""
    scrubbing = ScrubbingSpanExporter(exporter)
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    provider.add_span_processor(BatchSpanProcessor(scrubbing) if batched else SimpleSpanProcessor(scrubbing))
    return provider


class ScrubbingSpanExporter(SpanExporter):
    """Invariant 6 (no card number leaves Penny) for traces. A request span carries the URL, query string
    included, of a request the API may go on to refuse for the card number in it; an error's message
    becomes a span's status and event. Scrubbed when the span is exported, not when it starts: the HTTP
    instrumentation sets the URL again after the span has started."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([scrubbed_span(span) for span in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


def scrubbed_span(span: ReadableSpan) -> ReadableSpan:
    """`span` itself when nothing in it looks like a card number or a secret, else a scrubbed copy."""
    attributes = _scrubbed_attributes(span.attributes)
    events = [Event(event.name, _scrubbed_attributes(event.attributes), event.timestamp) for event in span.events]
    description = span.status.description
    clean_description = _scrubbed(description) if description else description
    unchanged = (
        attributes == span.attributes
        and all(clean.attributes == event.attributes for clean, event in zip(events, span.events, strict=True))
        and clean_description == description
    )
    if unchanged:
        return span
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=events,
        links=span.links,
        kind=span.kind,
        status=Status(span.status.status_code, clean_description),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def _scrubbed_attributes(attributes: Attributes) -> Attributes:
    if not attributes:
        return attributes
    clean: dict[str, AttributeValue] = {}
    for key, value in attributes.items():
        if isinstance(value, str):
            clean[key] = _scrubbed(value)
        elif isinstance(value, Sequence) and any(isinstance(item, str) for item in value):
            # A tuple, as the SDK stores sequences, so an unchanged one compares equal.
            clean[key] = tuple(_scrubbed(item) if isinstance(item, str) else item for item in value)
        else:
            clean[key] = value
    return clean


def _scrubbed(text: str) -> str:
    # A URL may hide a number behind percent-encoding (`4242%204242...`), which the API's card check
    # decodes too: such a value is kept decoded, and scrubbed.
    decoded = unquote_plus(text)
    decoded_clean = scrub(decoded)
    return decoded_clean if decoded_clean != decoded else scrub(text)
