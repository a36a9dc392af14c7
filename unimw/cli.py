"""The ``unimw`` command: ``serve`` a policy, or ``check`` one."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from unimw.loader import ConfigError, load_policy
from unimw.policy import Policy


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unimw", description="An OpenAI-compatible LLM gateway for your app.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the gateway's /v1 routes with uvicorn")
    serve.add_argument("--config", default="policies.yaml", help="policy file (default: policies.yaml)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")

    check = commands.add_parser("check", help="validate a policy file and print what it defines")
    check.add_argument("config", nargs="?", default="policies.yaml")

    usage = commands.add_parser("usage", help="print each tenant's spend and remaining limits from the store")
    usage.add_argument("--config", default="policies.yaml")
    usage.add_argument("--tenant", help="only this tenant")

    hash_key = commands.add_parser("hash-key", help="print the sha256: form of an API key, for tenants.*.api_keys")
    hash_key.add_argument("key")

    args = parser.parse_args(argv)
    if args.command == "check":
        return run_check(args.config)
    if args.command == "usage":
        return asyncio.run(run_usage(args.config, args.tenant))
    if args.command == "hash-key":
        from unimw.tenants import hash_key as hashed

        print(hashed(args.key))
        return 0
    return run_serve(args.config, args.host, args.port, args.log_level)


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
        lines.append(f"  {name} [{alias.strategy}] -> {targets}")
    return "\n".join(lines)


async def run_usage(path: str, only: str | None) -> int:
    from unimw.limits import Limiter
    from unimw.stores import limit_store
    from unimw.stores.base import StoreUnavailable

    try:
        policy = load_policy(path)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if only is not None and only not in policy.tenants:
        print(f"error: no tenant {only!r} in {path}", file=sys.stderr)
        return 1
    limiter = Limiter(policy, limit_store(policy.tenancy.store))
    try:
        for tenant in [only] if only else list(policy.tenants):
            print(tenant)
            rows = await limiter.report(tenant)
            for what, used, limit in rows:
                print(f"  {what:<20} used {used:>14,.6g}  of {limit:>14,.6g}  remaining {max(0.0, limit - used):,.6g}")
            if not rows:
                print("  (no limits)")
    except StoreUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        await limiter.aclose()
    return 0


def run_serve(path: str, host: str, port: int, log_level: str) -> int:
    try:
        import uvicorn
    except ImportError:
        print("error: `unimw serve` needs uvicorn: pip install 'unimw[serve]'", file=sys.stderr)
        return 1
    from unimw.server import build_app

    try:
        app = build_app(path)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
