"""What ``import unimw`` costs: which modules it loads, and which wait until a policy needs them.

Each check runs in a fresh interpreter, since this one has imported most of
unimw already. No timing is asserted (the machine is shared): the modules
loaded are what makes the time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import unimw
import unimw.policy

ROOT = Path(__file__).resolve().parent.parent

#: Where each public name is defined: ``unimw.X`` must be that very object.
PUBLIC = {
    "Answer": "unimw.gateway",
    "AuthenticationFailed": "unimw.errors",
    "BudgetAlert": "unimw.limits",
    "BudgetExceeded": "unimw.errors",
    "CallStream": "unimw.calls",
    "ConfigError": "unimw.loader",
    "CircuitOpen": "unimw.errors",
    "ContentFiltered": "unimw.errors",
    "ContextLengthExceeded": "unimw.errors",
    "Gateway": "unimw.gateway",
    "GatewayApp": "unimw.asgi",
    "Identity": "unimw.identity",
    "Inbound": "unimw.gateway",
    "InvalidRequest": "unimw.errors",
    "Limit": "unimw.policy",
    "MethodNotAllowed": "unimw.errors",
    "ModelNotFound": "unimw.errors",
    "NotFound": "unimw.errors",
    "Operation": "unimw.operations.base",
    "PayloadTooLarge": "unimw.errors",
    "PermissionDenied": "unimw.errors",
    "Policy": "unimw.policy",
    "RateLimited": "unimw.errors",
    "Reading": "unimw.operations.base",
    "ServiceUnavailable": "unimw.errors",
    "StreamTooLong": "unimw.errors",
    "StreamWatch": "unimw.operations.base",
    "UnimwError": "unimw.errors",
    "UnimwMiddleware": "unimw.asgi",
    "UnsupportedMediaType": "unimw.errors",
    "UpstreamError": "unimw.errors",
    "UpstreamTimeout": "unimw.errors",
    "UpstreamUnavailable": "unimw.errors",
    "UsageRecord": "unimw.records",
    "hash_key": "unimw.tenants",
    "load_policy": "unimw.loader",
}

#: Third-party packages ``import unimw`` must not load (nor any unimw module but the package itself).
NOT_AT_IMPORT = ["aiohttp", "asyncio", "openai", "opentelemetry", "orjson", "pydantic", "redis", "starlette", "yaml"]

#: The vendor adapter modules and their options models: every module of unimw.adapters but the registry and the
#: protocol every step names (``base``), read from the package so a new vendor module is covered too.
VENDOR_MODULES = sorted(
    f"unimw.adapters.{path.stem}"
    for path in (ROOT / "unimw" / "adapters").glob("*.py")
    if path.stem not in {"__init__", "base"}
)

#: What mounting a gateway must not load: the policy, what reads it, and what a policy's providers and stores need.
#: Each waits until a gateway is built from a policy (Gateway.from_yaml, from_dict, load_policy), and
#: ``from unimw import Gateway, UnimwMiddleware`` costs about as much as ``import httpx`` (docs/performance.md).
NOT_FOR_GATEWAY = [
    "aiohttp",
    "openai",
    "opentelemetry.sdk",
    "pydantic",
    "pydantic_core",
    "redis",
    "unimw.cli",
    "unimw.loader",
    "unimw.policy",
    "unimw.server",
    "unimw.stores.memory",
    "unimw.stores.redis",
    "yaml",
    *VENDOR_MODULES,
]

#: Every unimw module mounting a gateway loads: what a call runs through on its hot path. The steps that only a
#: gateway's construction names (limits, dispatch, tracing, records, the other operations, ...) load with it.
GATEWAY_MODULES = [
    "unimw",
    "unimw.adapters",
    "unimw.asgi",
    "unimw.cache",
    "unimw.calls",
    "unimw.context_window",
    "unimw.continuation",
    "unimw.errors",
    "unimw.gateway",
    "unimw.identity",
    "unimw.notation",
    "unimw.operations",
    "unimw.operations.base",
    "unimw.operations.chat",
    "unimw.operations.chat_content",
    "unimw.operations.chat_streams",
    "unimw.operations.chat_validation",
    "unimw.operations.fields",
    "unimw.plans",
    "unimw.stores",
    "unimw.stores.base",
    "unimw.tags",
    "unimw.tenants",
    "unimw.usage",
    "unimw.wire",
]

#: The public names that are the policy or read it: the only ones that load pydantic.
POLICY_NAMES = ["ConfigError", "Limit", "Policy", "load_policy"]

#: Every policy model (read from the module, so a new one is covered): each one's validator is built on its
#: first validation, not at import, and the sections' defaults are made without building theirs.
DEFERRED_MODELS = sorted(
    name
    for name, value in vars(unimw.policy).items()
    if isinstance(value, type) and issubclass(value, BaseModel) and value is not BaseModel and not name.startswith("_")
)

_REPORT = """
import json, sys

def loaded(names):
    return sorted(n for n in names if n in sys.modules or any(m.startswith(n + ".") for m in sys.modules))

# What is loaded is read before the report imports unimw.policy to see which models are built.
found = loaded(json.loads(sys.argv[1]))
import unimw.policy

models = {name: getattr(unimw.policy, name).__pydantic_complete__ for name in json.loads(sys.argv[2])}
print(json.dumps({"loaded": found, "built": models, **globals().get("extra", {})}))
"""


def _python(code: str, *args: str) -> Any:
    """Run ``code`` in a fresh interpreter from the checkout; the JSON it prints last."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout.splitlines()[-1])


def _after(setup: str, watched: list[str]) -> Any:
    """Which of ``watched`` are loaded after ``setup``, and which policy models are built."""
    # The report itself imports unimw.policy, after what is measured; ``setup`` may leave more to report in
    # ``extra``.
    return _python(f"{textwrap.dedent(setup)}\n{_REPORT}", json.dumps(watched), json.dumps(DEFERRED_MODELS))


def test_import_unimw_loads_no_module_of_its_own_and_no_dependency() -> None:
    result = _python(
        """
        import json, sys
        import unimw
        own = sorted(m for m in sys.modules if m.split(".")[0] == "unimw")
        third = sorted(m.split(".")[0] for m in sys.modules if m.split(".")[0] in json.loads(sys.argv[1]))
        print(json.dumps({"own": own, "third": sorted(set(third))}))
        """,
        json.dumps(NOT_AT_IMPORT),
    )
    assert result == {"own": ["unimw"], "third": []}


def test_the_vendor_modules_are_those_of_the_registry() -> None:
    # The list the checks below watch is read from the package: it must hold every adapter and options module.
    assert VENDOR_MODULES == [
        "unimw.adapters.anthropic",
        "unimw.adapters.anthropic_cache",
        "unimw.adapters.anthropic_messages",
        "unimw.adapters.anthropic_models",
        "unimw.adapters.anthropic_replies",
        "unimw.adapters.gemini",
        "unimw.adapters.gemini_messages",
        "unimw.adapters.gemini_replies",
        "unimw.adapters.gemini_schema",
        "unimw.adapters.gemini_thinking",
        "unimw.adapters.mock",
        "unimw.adapters.openai",
        "unimw.adapters.openai_shapes",
        "unimw.adapters.options",
    ]


def test_mounting_a_gateway_leaves_the_policy_pydantic_adapters_stores_and_yaml_for_later() -> None:
    mount = """
        import sys
        from unimw import Gateway, UnimwMiddleware

        extra = {"own": sorted(m for m in sys.modules if m.split(".")[0] == "unimw")}
        """
    result = _after(mount, NOT_FOR_GATEWAY)
    assert result == {"loaded": [], "built": dict.fromkeys(DEFERRED_MODELS, False), "own": GATEWAY_MODULES}


def test_only_the_policy_names_load_the_policy() -> None:
    light = sorted(set(PUBLIC) - set(POLICY_NAMES))
    result = _after(f"from unimw import {', '.join(light)}", NOT_FOR_GATEWAY)
    assert result == {"loaded": [], "built": dict.fromkeys(DEFERRED_MODELS, False)}


_GATEWAY = """
import asyncio
from unimw import Gateway

gateway = Gateway.from_dict(
    {{
        "providers": {{"local": {{"kind": "mock"}}}},
        "models": {{"m": {{"provider": "local", "model": "echo"}}}},
        "tenancy": {{"store": "{store}"}},
    }}
)
"""

_ONE_CALL = """
async def call():
    async with gateway:
        answer = await gateway.chat_completions({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    return answer["choices"][0]["message"]["content"], answer["usage"]["total_tokens"]

extra = {"answer": asyncio.run(call())}
"""

#: What a gateway on the mock provider and the memory store loads of the watched modules.
_FOR_A_MOCK_GATEWAY = [
    "pydantic",
    "pydantic_core",
    "unimw.adapters.mock",
    "unimw.adapters.options",
    "unimw.loader",
    "unimw.policy",
    "unimw.stores.memory",
]


def test_a_gateway_loads_the_adapter_its_policy_names_and_builds_the_policy_validator() -> None:
    result = _after(_GATEWAY.format(store="memory://"), NOT_FOR_GATEWAY)
    # Policy's validator holds the sections' schemas: their own validators wait for a use of their own.
    assert result == {
        "loaded": _FOR_A_MOCK_GATEWAY,
        "built": {**dict.fromkeys(DEFERRED_MODELS, False), "Policy": True},
    }


def test_a_gateway_built_from_a_dict_answers_with_what_it_loaded() -> None:
    result = _after(_GATEWAY.format(store="memory://") + _ONE_CALL, NOT_FOR_GATEWAY)
    assert result == {
        "loaded": _FOR_A_MOCK_GATEWAY,
        "built": {**dict.fromkeys(DEFERRED_MODELS, False), "Policy": True},
        "answer": ['This is a mock reply from unimw (no model was called). You said: "hi"', 19],
    }


def test_names_loaded_with_a_gateway_read_as_unimw_though_the_app_never_named_them() -> None:
    # The policy, the loader, limits and records load when a gateway is built, after ``from unimw import Gateway``.
    result = _python(
        """
        import json, sys
        from unimw import Gateway

        Gateway.from_dict({"providers": {"local": {"kind": "mock"}}, "models": {"m": {"provider": "local", "model": "m"}}})
        try:
            Gateway.from_dict({"models": {"m": {"provider": "nowhere", "model": "m"}}})
        except Exception as exc:
            raised = f"{type(exc).__module__}.{type(exc).__qualname__}"
        late = {"BudgetAlert": "unimw.limits", "Limit": "unimw.policy", "Policy": "unimw.policy",
                "UsageRecord": "unimw.records", "load_policy": "unimw.loader"}
        print(json.dumps({"raised": raised, "late": {n: getattr(sys.modules[m], n).__module__ for n, m in late.items()}}))
        """
    )
    assert result == {
        "raised": "unimw.ConfigError",
        "late": {
            "BudgetAlert": "unimw",
            "Limit": "unimw",
            "Policy": "unimw",
            "UsageRecord": "unimw",
            "load_policy": "unimw",
        },
    }


def test_a_redis_store_loads_redis() -> None:
    # The client connects on its first command: none is sent here.
    result = _after(_GATEWAY.format(store="redis://127.0.0.1:6379/0"), ["redis", "unimw.stores.redis"])
    assert result["loaded"] == ["redis", "unimw.stores.redis"]


def test_every_public_name_resolves_to_its_definition_and_reads_as_unimw() -> None:
    result = _python(
        """
        import importlib, json, sys
        import unimw

        public = json.loads(sys.argv[1])
        report = {
            "resolved": sorted(set(public) & set(vars(unimw))),
            "not_in_dir": sorted(set(unimw.__all__) - set(dir(unimw))),
        }
        from unimw import Gateway

        # Loaded along with Gateway, never named: an error raised from inside reads as unimw's.
        report["inner_error"] = sys.modules["unimw.errors"].RateLimited.__module__
        star = {}
        exec("from unimw import *", star)
        report["names"] = {
            name: [
                getattr(unimw, name) is getattr(importlib.import_module(module), name),
                getattr(unimw, name).__module__,
                star[name] is getattr(unimw, name),
            ]
            for name, module in public.items()
        }
        try:
            unimw.no_such_name
        except AttributeError as exc:
            report["missing"] = str(exc)
        print(json.dumps(report))
        """,
        json.dumps(PUBLIC),
    )
    assert result == {
        "resolved": [],
        "not_in_dir": [],
        "inner_error": "unimw",
        "names": {name: [True, "unimw", True] for name in PUBLIC},
        "missing": "module 'unimw' has no attribute 'no_such_name'",
    }


def test_the_public_names_are_the_documented_ones() -> None:
    assert unimw.__all__ == sorted([*PUBLIC, "__version__"])
    assert {name: getattr(unimw, name).__module__ for name in PUBLIC} == dict.fromkeys(PUBLIC, "unimw")
    assert unimw.__version__ == "0.1.0"
