"""The OpenTelemetry SDK in memory, for exact assertions on spans and metrics.

Tests pass ``telemetry.providers`` to the Gateway (``Gateway.from_dict(policy,
**telemetry.providers)``) and never touch the global providers. Spans come
back as plain dicts (:class:`SpanDict`), so a test compares whole attribute
dicts and the tree of names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypedDict

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


class SpanDict(TypedDict):
    name: str
    kind: str  #: ``CLIENT``, ``SERVER``, ``INTERNAL``
    parent: str | None  #: the parent span's name (None for a root span)
    status: str  #: ``UNSET``, ``OK`` or ``ERROR``
    description: str | None
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    trace_id: int
    span_id: int
    parent_id: int | None


@dataclass
class Telemetry:
    """An SDK tracer provider and meter provider that keep everything in memory."""

    exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    reader: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)

    def __post_init__(self) -> None:
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    @property
    def providers(self) -> dict[str, Any]:
        """Keyword arguments for ``Gateway(...)``, ``Gateway.from_dict`` and ``Gateway.from_yaml``."""
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def spans(self) -> list[SpanDict]:
        """Every finished span, in the order the spans started."""
        finished = sorted(self.finished(), key=lambda s: s.start_time or 0)
        names = {s.context.span_id: s.name for s in finished if s.context is not None}
        return [_as_dict(s, names) for s in finished]

    def span(self, name: str) -> SpanDict:
        """The one finished span called ``name``."""
        found = [s for s in self.spans() if s["name"] == name]
        assert len(found) == 1, f"{len(found)} spans named {name!r}: {[s['name'] for s in self.spans()]}"
        return found[0]

    def tree(self) -> list[str]:
        """Span names indented by depth, children in start order under their parent."""
        return ["  " * depth + span["name"] for depth, span in self.walk()]

    def walk(self) -> list[tuple[int, SpanDict]]:
        """Every span with its depth, in the order of :meth:`tree`."""
        spans = self.spans()
        ids = {s["span_id"] for s in spans}
        ordered: list[tuple[int, SpanDict]] = []

        def walk(parent: int | None, depth: int) -> None:
            for span in spans:
                if span["parent_id"] == parent:
                    ordered.append((depth, span))
                    walk(span["span_id"], depth + 1)

        for span in spans:
            if span["parent_id"] not in ids:
                ordered.append((0, span))
                walk(span["span_id"], 1)
        return ordered

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Each metric's points as ``(attributes, value)``: a counter's sum, a histogram's ``(count, sum)``."""
        data = self.reader.get_metrics_data()
        out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points = out.setdefault(metric.name, [])
                    for point in metric.data.data_points:
                        value = (point.count, point.sum) if hasattr(point, "count") else point.value  # type: ignore[union-attr]
                        points.append((dict(point.attributes or {}), value))
        return out

    def histogram(self, name: str) -> dict[str, Any]:
        """A histogram's first point in full (attributes, count, sum, bucket bounds)."""
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        point = metric.data.data_points[0]
                        return {
                            "unit": metric.unit,
                            "count": point.count,  # type: ignore[union-attr]
                            "bounds": tuple(point.explicit_bounds),  # type: ignore[union-attr]
                        }
        raise AssertionError(f"no metric {name}")

    def everything(self) -> str:
        """All exported spans (with events, status and resource) and metrics as one JSON text, for scanning."""
        spans = [json.loads(s.to_json()) for s in self.finished()]
        data = self.reader.get_metrics_data()
        metrics = json.loads(data.to_json()) if data else None
        return json.dumps({"spans": spans, "metrics": metrics})


def _as_dict(span: ReadableSpan, names: dict[int, str]) -> SpanDict:
    parent = span.parent.span_id if span.parent is not None else None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "parent": names.get(parent) if parent is not None else None,
        "status": span.status.status_code.name,
        "description": span.status.description,
        "attributes": dict(span.attributes or {}),
        "events": [(e.name, dict(e.attributes or {})) for e in span.events],
        "trace_id": span.context.trace_id if span.context else 0,
        "span_id": span.context.span_id if span.context else 0,
        "parent_id": parent,
    }
