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

import unimw

ROOT = Path(__file__).resolve().parent.parent

#: Where each public name is defined: ``unimw.X`` must be that very object.
PUBLIC = {
    "Answer": "unimw.gateway",
    "AuthenticationFailed": "unimw.errors",
    "BudgetAlert": "unimw.limits",
    "BudgetExceeded": "unimw.errors",
    "CallStream": "unimw.calls",
    "ConfigError": "unimw.loader",
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
    "StreamWatch": "unimw.operations.base",
    "UnimwError": "unimw.errors",
    "UnimwMiddleware": "unimw.asgi",
    "UpstreamError": "unimw.errors",
    "UpstreamTimeout": "unimw.errors",
    "UpstreamUnavailable": "unimw.errors",
    "UsageRecord": "unimw.records",
    "hash_key": "unimw.tenants",
    "load_policy": "unimw.loader",
}

#: Third-party packages ``import unimw`` must not load (nor any unimw module but the package itself).
NOT_AT_IMPORT = ["aiohttp", "asyncio", "openai", "opentelemetry", "orjson", "pydantic", "redis", "starlette", "yaml"]

#: Loaded only when a gateway's policy needs them, not by ``from unimw import Gateway``.
NOT_FOR_GATEWAY = [
    "aiohttp",
    "openai",
    "opentelemetry.sdk",
    "redis",
    "unimw.adapters.anthropic",
    "unimw.adapters.gemini",
    "unimw.adapters.mock",
    "unimw.adapters.openai",
    "unimw.adapters.options",
    "unimw.cli",
    "unimw.server",
    "unimw.stores.memory",
    "unimw.stores.redis",
    "yaml",
]

#: Policy models whose validators are built on first validation, not at import. (Price is built when
#: unimw.usage makes its default prices; the settings sections when their default instances are made.)
DEFERRED_MODELS = [
    "Alias",
    "BudgetStep",
    "CacheRule",
    "CallableSource",
    "GlobalLimit",
    "HeaderSource",
    "KeyLookupSource",
    "Limit",
    "Model",
    "Plan",
    "Policy",
    "Provider",
    "Tenant",
    "WeightedTarget",
]

_REPORT = """
import json, sys
import unimw.policy

def loaded(names):
    return sorted(n for n in names if n in sys.modules or any(m.startswith(n + ".") for m in sys.modules))

models = {name: getattr(unimw.policy, name).__pydantic_complete__ for name in json.loads(sys.argv[2])}
print(json.dumps({"loaded": loaded(json.loads(sys.argv[1])), "built": models}))
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
    # The report itself imports unimw.policy, after what is measured.
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


def test_from_unimw_import_gateway_leaves_adapters_stores_yaml_and_models_for_later() -> None:
    result = _after("from unimw import Gateway", NOT_FOR_GATEWAY)
    assert result == {"loaded": [], "built": dict.fromkeys(DEFERRED_MODELS, False)}


_GATEWAY = """
from unimw import Gateway

Gateway.from_dict(
    {{
        "providers": {{"local": {{"kind": "mock"}}}},
        "models": {{"m": {{"provider": "local", "model": "echo"}}}},
        "tenancy": {{"store": "{store}"}},
    }}
)
"""


def test_a_gateway_loads_the_adapter_its_policy_names_and_builds_the_policy_validator() -> None:
    result = _after(_GATEWAY.format(store="memory://"), NOT_FOR_GATEWAY)
    # Policy's validator holds the sections' schemas: their own validators wait for a use of their own.
    assert result == {
        "loaded": ["unimw.adapters.mock", "unimw.adapters.options", "unimw.stores.memory"],
        "built": {**dict.fromkeys(DEFERRED_MODELS, False), "Policy": True},
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
