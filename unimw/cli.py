"""The ``unimw`` command: ``serve`` a policy, or ``check`` one."""

from __future__ import annotations

import argparse
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

    args = parser.parse_args(argv)
    if args.command == "check":
        return run_check(args.config)
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
