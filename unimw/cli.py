"""The ``unimw`` command: ``serve`` a policy, ``check`` one, explain a ``route``, or print the ``schema`` of one."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from unimw.loader import ConfigError, load_policy, policy_schema
from unimw.policy import Policy
from unimw.serve_limits import ServeLimits, bounded_http, tune_gc
from unimw.usage_report import (
    FIELDS,
    UnknownTenant,
    group_key,
    instant,
    limit_json,
    render_table,
    summarize,
    tenant_rules,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.trace.export import SpanExporter
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

T = TypeVar("T")


def positive(kind: Callable[[str], float], noun: str) -> Callable[[str], float]:
    """An argparse type: ``kind``, refused unless above zero (a zero timeout or limit would refuse everything)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be a positive {noun}, not {text}")
        return value

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unimw", description="An OpenAI-compatible LLM gateway for your app.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the gateway's /v1 routes with uvicorn")
    serve.add_argument("--config", default="policies.yaml", help="policy file (default: policies.yaml)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    serve.add_argument(
        "--otel",
        choices=("console", "otlp"),
        help="export spans and metrics to the console, or by OTLP/HTTP as the standard OTEL_* variables say",
    )
    serve.add_argument(
        "--workers",
        type=worker_count,
        default=1,
        metavar="N|auto",
        help="processes answering on the port (auto: one per core; default: 1, this process alone); each has "
        "its own memory:// stores, so limits need tenancy.store redis://..., and each keeps its own response "
        "cache (and /v1/responses store) unless those are on Redis too",
    )
    serve.add_argument(
        "--reload",
        action="store_true",
        help="on SIGHUP, re-read --config and serve it to new calls (calls in flight finish under the policy they "
        "began with; a file that does not load is logged with its line and the running policy kept); with "
        "--workers, the SIGHUP sent to the parent reaches every worker",
    )
    add_limits(serve)

    check = commands.add_parser("check", help="validate a policy file and print what it defines")
    check.add_argument("config", nargs="?", default="policies.yaml")

    usage = commands.add_parser(
        "usage",
        help="sum spend from usage records (--records), or print each tenant's remaining limits from the store",
    )
    usage.add_argument("--records", metavar="FILE", help="a usage.jsonl file to sum, instead of reading the store")
    usage.add_argument(
        "--by",
        action="append",
        type=checked(group_key),
        metavar="KEY",
        help=f"with --records: group by {', '.join(FIELDS)} or tag:<key>; repeat to combine (default: tenant)",
    )
    usage.add_argument(
        "--since", type=checked(moment), metavar="TIME", help="with --records: from this time (ISO 8601, or 7d, 12h)"
    )
    usage.add_argument("--until", type=checked(moment), metavar="TIME", help="with --records: before this time")
    usage.add_argument("--config", default="policies.yaml", help="without --records: the policy whose store is read")
    usage.add_argument("--tenant", help="only this tenant (without --records: also one the policy does not declare)")
    usage.add_argument("--plan", help="without --records: the plan of an undeclared --tenant (default: default_plan)")
    usage.add_argument("--json", action="store_true", dest="as_json", help="print one JSON document")

    route = commands.add_parser("route", help="print the targets a request would try, in order, and why")
    add_route_flags(route)

    commands.add_parser("schema", help="print the JSON Schema of policy files, for editors to check them with")

    hash_key = commands.add_parser("hash-key", help="print the sha256: form of an API key, for tenants.*.api_keys")
    hash_key.add_argument("key")

    args = parser.parse_args(argv)
    if args.command == "check":
        return run_check(args.config)
    if args.command == "schema":
        print(json.dumps(policy_schema(), indent=2, ensure_ascii=False))
        return 0
    if args.command == "usage":
        return usage_command(usage, args)
    if args.command == "route":
        return asyncio.run(run_route(args))
    if args.command == "hash-key":
        from unimw.tenants import hash_key as hashed

        print(hashed(args.key))
        return 0
    limits = ServeLimits(
        header_timeout=args.header_timeout,
        max_header_bytes=args.max_header_bytes,
        body_timeout=args.body_timeout,
        keep_alive=args.keep_alive,
        limit_concurrency=args.limit_concurrency,
        shutdown_grace=args.shutdown_grace,
    )
    return run_serve(
        args.config, args.host, args.port, args.log_level, args.otel, limits, args.workers, reload=args.reload
    )


def worker_count(text: str) -> int:
    """An argparse type for ``--workers``: a positive count, or ``auto`` for the cores this process may use."""
    if text == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return int(positive(int, "whole number or auto")(text))


#: Each connection bound of ``unimw serve``: its ServeLimits field, the flag's metavar, and what it does.
_LIMIT_FLAGS = (
    ("header_timeout", "SECONDS", "close a connection whose request head is not complete in this time"),
    ("max_header_bytes", "BYTES", "answer 431 to a request head larger than this"),
    ("body_timeout", "SECONDS", "answer 408 and close when a request body is not complete in this time"),
    ("keep_alive", "SECONDS", "close an idle kept-alive connection after this time"),
    ("limit_concurrency", "N", "answer 503 once this many connections and requests are open"),
    ("shutdown_grace", "SECONDS", "on SIGTERM, let calls and streams in flight finish this long, then cancel them"),
)


def add_limits(serve: argparse.ArgumentParser) -> None:
    default = ServeLimits()
    seconds, count = positive(float, "number"), positive(int, "whole number")
    for field, metavar, what in _LIMIT_FLAGS:
        value = getattr(default, field)
        serve.add_argument(
            "--" + field.replace("_", "-"),
            type=seconds if isinstance(value, float) else count,
            default=value,
            metavar=metavar,
            help=f"{what} (default: {value:g})",
        )


def run_check(path: str) -> int:
    try:
        policy = load_policy(path)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(describe(policy, path))
    return 0


def describe(policy: Policy, path: str) -> str:
    """A human summary of what a valid policy defines."""
    from unimw.route_rules import compile_rule

    lines = [f"{path}: OK"]
    lines.append(f"providers ({len(policy.providers)}):")
    lines += [f"  {name}: {p.kind} {p.base_url or ''}".rstrip() for name, p in policy.providers.items()]
    lines.append(f"models ({len(policy.models)}):")
    lines += [f"  {name} -> {m.provider}/{m.model}" for name, m in policy.models.items()]
    lines.append(f"aliases ({len(policy.aliases)}):")
    for name, alias in policy.aliases.items():
        targets = ", ".join(
            model if weight == 1 else f"{model} (weight {weight:g})" for model, weight in policy.expand(name)
        )
        sticky = f", sticky on {alias.sticky}" if alias.sticky is not None else ""
        lines.append(f"  {name} [{alias.strategy}{sticky}] -> {targets}")
        for i, rule in enumerate(alias.when):
            picked = ", ".join(model for model, _ in policy.expand_rule(name, i))
            lines.append(f"    when {compile_rule(i, rule).text} -> {picked}")
    return "\n".join(lines)


def add_route_flags(route: argparse.ArgumentParser) -> None:
    """The flags of ``unimw route``: the policy, the name called, and what the request would be."""
    route.add_argument("--config", default="policies.yaml", help="policy file (default: policies.yaml)")
    route.add_argument("--model", required=True, help="the model or alias the request names")
    route.add_argument("--tenant", help="the calling tenant (default: tenancy.default)")
    route.add_argument("--plan", help="the plan of an undeclared --tenant (default: tenancy.default_plan)")
    route.add_argument("--end-user", help="the end user the request is for")
    route.add_argument("--tools", action="store_true", help="the request offers tools")
    route.add_argument("--images", action="store_true", help="a message carries an image")
    route.add_argument("--structured", action="store_true", help="the request wants structured output")
    route.add_argument("--tokens", type=int, default=0, metavar="N", help="estimated prompt tokens (default: 0)")
    route.add_argument("--max-tokens", type=int, metavar="N", help="the request's output cap")
    route.add_argument(
        "--tag", action="append", type=checked(tag_pair), default=[], metavar="KEY=VALUE", help="a tag; repeatable"
    )
    route.add_argument(
        "--header",
        action="append",
        type=checked(header_pair),
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header; repeatable",
    )
    route.add_argument("--store", metavar="URL", help="read least_latency figures from this redis:// store")


def tag_pair(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise ValueError(f"{text!r} is not KEY=VALUE")
    return key.strip(), value.strip()


def header_pair(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise ValueError(f"{text!r} is not 'NAME: VALUE'")
    return name.strip().lower(), value.strip()


async def run_route(args: argparse.Namespace) -> int:
    """``unimw route``: 0 with the explanation, 1 for a policy, name, tenant or store that cannot be used."""
    from unimw.errors import ModelNotFound
    from unimw.latency import Figure
    from unimw.route_report import report
    from unimw.route_rules import Facts
    from unimw.stores.base import StoreUnavailable

    try:
        policy = load_policy(args.config)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    tenant = args.tenant or policy.tenancy.default
    try:
        rules = tenant_rules(policy, tenant, args.plan) if tenant is not None else None
    except UnknownTenant as error:
        print(f"error: {args.config}: {error}", file=sys.stderr)
        return 1
    figures: dict[str, Figure] | None = None
    if args.store is not None:
        if not args.store.startswith(("redis://", "rediss://", "unix://")):
            print(f"error: --store must be a redis:// URL, got {args.store!r}", file=sys.stderr)
            return 1
        from unimw.stores.latency import RedisLatency

        shared = RedisLatency(args.store)
        try:
            figures = await shared.read()
        except StoreUnavailable as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        finally:
            await shared.aclose()
    request = {"max_tokens": args.max_tokens} if args.max_tokens is not None else {}
    facts = Facts(
        request,
        tenant=tenant,
        plan=rules.plan if rules is not None else None,
        end_user=args.end_user,
        tags=dict(args.tag),
        headers=dict(args.header),
        tokens=args.tokens,
        tools=args.tools,
        images=args.images,
        structured=args.structured,
    )
    try:
        lines = report(policy, args.model, facts, now=time.time(), figures=figures, rules=rules)
    except ModelNotFound:
        print(f"error: {args.config}: no model or alias {args.model!r}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def checked(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a parser that raises ValueError, keeping its message."""

    def parsed(text: str) -> T:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error

    return parsed


def moment(text: str) -> float:
    """A ``--since`` or ``--until`` value: a span (``7d``) counts back from now."""
    return instant(text, time.time())


def usage_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``unimw usage``: records summed when ``--records`` is given, the store's counters otherwise.

    Wrong arguments exit with status 2 (argparse's), a file or policy that
    cannot be read, or a store that cannot be reached, with status 1.
    """
    if args.records is None:
        for flag in ("by", "since", "until"):
            if getattr(args, flag) is not None:
                parser.error(f"--{flag} needs --records")
        if args.plan is not None and args.tenant is None:
            parser.error("--plan needs --tenant")
        return asyncio.run(run_usage(args.config, args.tenant, plan=args.plan, as_json=args.as_json))
    if args.plan is not None:
        parser.error("--plan is for the store's report, not --records")
    return run_records(
        args.records,
        args.by or ["tenant"],
        since=args.since,
        until=args.until,
        tenant=args.tenant,
        as_json=args.as_json,
    )


def run_records(
    path: str,
    by: Sequence[str],
    *,
    since: float | None = None,
    until: float | None = None,
    tenant: str | None = None,
    as_json: bool = False,
) -> int:
    try:
        with open(path, "rb") as lines:
            report = summarize(lines, by, since=since, until=until, tenant=tenant)
    except OSError as error:
        print(f"error: cannot read {path}: {error.strerror or error}", file=sys.stderr)
        return 1
    if report.malformed:
        print(
            f"warning: skipped {report.malformed} malformed line(s) in {path} (the first is line {report.first_malformed})",
            file=sys.stderr,
        )
    print(json.dumps(report.as_json(), indent=2, ensure_ascii=False) if as_json else render_table(report))
    return 0


async def run_usage(path: str, only: str | None, *, plan: str | None = None, as_json: bool = False) -> int:
    from unimw.limits import Limiter
    from unimw.stores import limit_store
    from unimw.stores.base import StoreUnavailable

    try:
        policy = load_policy(path)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        tenants = [(name, tenant_rules(policy, name, plan)) for name in ([only] if only else policy.tenants)]
    except UnknownTenant as error:
        print(f"error: {path}: {error}", file=sys.stderr)
        return 1
    limiter = Limiter(policy, limit_store(policy.tenancy.store))
    try:
        report = [(name, rules.plan, await limiter.report(name, rules)) for name, rules in tenants]
    except StoreUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        await limiter.aclose()
    if as_json:
        document = [
            {"tenant": name, "plan": on, "limits": [limit_json(*row) for row in rows]} for name, on, rows in report
        ]
        print(json.dumps({"tenants": document}, indent=2, ensure_ascii=False))
        return 0
    for name, on, rows in report:
        print(name if on is None else f"{name} (plan {on})")
        for what, used, limit in rows:
            print(f"  {what:<20} used {used:>14,.6g}  of {limit:>14,.6g}  remaining {max(0.0, limit - used):,.6g}")
        if not rows:
            print("  (no limits)")
    return 0


def run_serve(
    path: str,
    host: str,
    port: int,
    log_level: str,
    otel: str | None = None,
    limits: ServeLimits | None = None,
    workers: int = 1,
    *,
    reload: bool = False,
) -> int:
    limits = limits or ServeLimits()
    try:
        import uvicorn

        from unimw.coalescing import coalescing_http

        protocol = coalescing_http(bounded_http(limits))
    except ImportError:
        print("error: `unimw serve` needs uvicorn with httptools: pip install 'unimw[serve]'", file=sys.stderr)
        return 1
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "access_log": False,
        # The gateway has no WebSocket routes, and a switched protocol would outlive the bounds above.
        "ws": "none",
        "timeout_keep_alive": limits.keep_alive,
        "limit_concurrency": limits.limit_concurrency,
        "timeout_graceful_shutdown": limits.shutdown_grace,
    }
    if workers > 1:
        return serve_workers(path, otel, limits, workers, options, reload=reload)
    from unimw.server import build_app

    try:
        shutdown = configure_otel(otel) if otel else None
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        app = build_app(path)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if reload:
        from unimw.serve_reload import reloading_on_sighup

        app = reloading_on_sighup(app, path)
    if shutdown is not None:
        app = flushing(instrument(app), shutdown)
    tune_gc()
    uvicorn.run(app, http=protocol, **options)
    return 0


def serve_workers(
    path: str, otel: str | None, limits: ServeLimits, workers: int, options: dict[str, Any], *, reload: bool = False
) -> int:
    """``unimw serve --workers N``, N > 1: the policy and the exporter are checked here, once, before any
    worker starts (each builds its own app; see :mod:`unimw.serve_workers`)."""
    from unimw.serve_workers import ServeApp, counted_in_process, run_workers

    try:
        if otel:
            otel_exporters(otel)
        policy = load_policy(path)
    except (ImportError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if (counted := counted_in_process(policy)) is not None:
        what = f"{counted} are" if counted.endswith("limits") else f"the limits the identities of {counted} carry are"
        print(
            f"error: {path}: {what} counted in each process with tenancy.store memory://, so {workers} "
            f"workers would let through up to {workers} times each limit: set tenancy.store to redis://host:port/db "
            "(one set of counters for every worker), or serve with --workers 1",
            file=sys.stderr,
        )
        return 1
    return run_workers(ServeApp(path, otel, reload), limits, workers, **options)


def configure_otel(exporter: str) -> Callable[[], None]:
    """Install global SDK tracer and meter providers exporting to ``console`` or ``otlp``; return their shutdown.

    OTLP goes over HTTP/protobuf, configured by the standard variables
    (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``, ...);
    ``OTEL_SERVICE_NAME`` names the service (``unimw`` by default).
    """
    span_exporter, metric_exporter = otel_exporters(exporter)
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    batching = BatchSpanProcessor if exporter == "otlp" else SimpleSpanProcessor
    processor: SpanProcessor = batching(span_exporter())
    named = "OTEL_SERVICE_NAME" in os.environ or "service.name" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    resource = Resource.create({} if named else {"service.name": "unimw"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(processor)
    meter_provider = MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(metric_exporter())])
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)

    def shutdown() -> None:
        tracer_provider.shutdown()
        meter_provider.shutdown()

    return shutdown


def otel_exporters(exporter: str) -> tuple[type[SpanExporter], type[MetricExporter]]:
    """The span and metric exporter classes of ``console`` or ``otlp``, imported only: with ``--workers``
    the parent checks them so, and each worker makes its own."""
    try:
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter
    except ImportError:
        raise ImportError("--otel needs the OpenTelemetry SDK: pip install 'unimw[otel]'") from None
    if exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ImportError(
                "--otel otlp needs the OTLP exporter (opentelemetry-exporter-otlp-proto-http): "
                "pip install 'unimw[otel]'"
            ) from None
        return OTLPSpanExporter, OTLPMetricExporter
    if exporter == "console":
        return ConsoleSpanExporter, ConsoleMetricExporter
    raise ValueError(f"unknown exporter {exporter!r}: use console or otlp")


def flushing(app: ASGIApp, shutdown: Callable[[], None]) -> ASGIApp:
    """``app``, calling ``shutdown`` (which exports what is still batched) when the server's lifespan ends.

    Not after ``uvicorn.run`` returns: on SIGTERM uvicorn re-raises the signal
    once it has stopped, which ends the process before any code after it runs.
    """

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            return await app(scope, receive, send)

        async def sending(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                shutdown()
            await send(message)

        await app(scope, receive, sending)

    return wrapped


def instrument(app: ASGIApp) -> ASGIApp:
    """``app`` with an HTTP server span per request (continuing an incoming ``traceparent``), when the
    ASGI instrumentation is installed; the gateway's spans are its children."""
    try:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    except ImportError:
        return app
    return OpenTelemetryMiddleware(app, exclude_spans=["receive", "send"])


if __name__ == "__main__":
    raise SystemExit(main())
