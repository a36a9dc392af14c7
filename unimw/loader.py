"""policies.yaml → :class:`~unimw.policy.Policy`, with errors that point at a line.

The YAML is composed into nodes (which know their line), built into plain
data, and ``${VAR}`` / ``${VAR:-default}`` references in string values are
replaced from the environment: after parsing, so a value can never inject
YAML. Every problem (bad YAML, a duplicate key, a missing variable, a
wrong field, a dangling reference) is a :class:`ConfigError` naming the
file, the line and the reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path as FilePath
from typing import Any

import yaml
from pydantic import ValidationError

from unimw.policy import Path, Policy, PolicyError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A policy that cannot be used, with where and why."""

    def __init__(self, reason: str, *, source: str = "<policy>", line: int | None = None) -> None:
        self.reason = reason
        self.source = source
        self.line = line
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {reason}")


def load_policy(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Policy:
    """Read, interpolate and validate a policy file."""
    source = str(path)
    try:
        text = FilePath(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the policy file: {exc.strerror}", source=source) from exc
    return parse_policy(text, source=source, env=env)


def parse_policy(text: str, *, source: str = "<policy>", env: Mapping[str, str] | None = None) -> Policy:
    """Validate a policy given as YAML text."""
    data, lines = _compose(text, source, os.environ if env is None else env)
    return build_policy(data, source=source, lines=lines)


def build_policy(data: Any, *, source: str = "<policy>", lines: Mapping[Path, int] | None = None) -> Policy:
    """Validate a policy given as plain data; ``lines`` maps value paths to lines."""
    lines = lines or {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the policy must be a mapping of sections (providers, models, ...)", source=source, line=1)
    try:
        policy = Policy.model_validate(data)
        policy.check()
    except ValidationError as exc:
        error = exc.errors()[0]
        path = tuple(error["loc"])
        # A tagged union repeats its tag in the path (resolve.0.header.header): say it once.
        parts = [str(p) for i, p in enumerate(path) if i == 0 or p != path[i - 1]]
        where = ".".join(parts) or "policy"
        extra = "" if exc.error_count() == 1 else f" (and {exc.error_count() - 1} more)"
        raise ConfigError(f"{where}: {_reason(error)}{extra}", source=source, line=_line(lines, path)) from exc
    except PolicyError as exc:
        raise ConfigError(exc.message, source=source, line=_line(lines, exc.path)) from exc
    return policy


def _reason(error: Any) -> str:
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        return "unknown field"
    return message.removeprefix("Value error, ")


def _line(lines: Mapping[Path, int], path: Path) -> int | None:
    """The line of ``path``, or of its nearest ancestor the file spells out."""
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get((), None)


def _compose(text: str, source: str, env: Mapping[str, str]) -> tuple[Any, dict[Path, int]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        data = loader.construct_document(node)
        lines: dict[Path, int] = {(): node.start_mark.line + 1}
        return _walk(loader, node, data, (), lines, source, env), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = f"invalid YAML: {exc.problem or exc.context}"
        raise ConfigError(reason, source=source, line=mark.line + 1 if mark else None) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", source=source) from exc
    finally:
        loader.dispose()


def _walk(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    value: Any,
    path: Path,
    lines: dict[Path, int],
    source: str,
    env: Mapping[str, str],
) -> Any:
    """Record each value's line, refuse duplicate keys, and return the value with its strings interpolated.

    Mappings and lists are rebuilt, never changed in place: an alias makes
    one constructed container appear at several paths, and interpolating it
    in place would expand an environment value's own ``${...}`` on the next
    visit. Each path is still walked, so it records its own lines.
    """
    if isinstance(node, yaml.MappingNode) and isinstance(value, dict):
        built: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node)
            if key in built:
                raise ConfigError(f"duplicate key {key!r}", source=source, line=key_node.start_mark.line + 1)
            child = (*path, str(key))
            lines[child] = key_node.start_mark.line + 1
            # A key equal to no key (NaN) cannot be looked up: its value is built again.
            item = value[key] if key in value else loader.construct_object(value_node, deep=True)
            built[key] = _walk(loader, value_node, item, child, lines, source, env)
        return built
    if isinstance(node, yaml.SequenceNode) and isinstance(value, list):
        items: list[Any] = []
        for i, (item_node, item) in enumerate(zip(node.value, value, strict=True)):
            child = (*path, i)
            lines[child] = item_node.start_mark.line + 1
            items.append(_walk(loader, item_node, item, child, lines, source, env))
        return items
    if isinstance(value, str):
        return _interpolate(value, env, source, node.start_mark.line + 1)
    return value


def _interpolate(value: str, env: Mapping[str, str], source: str, line: int) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match[1], match[2]
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(
            f"environment variable {name} is not set (write ${{{name}:-default}} to give a default)",
            source=source,
            line=line,
        )

    return _ENV.sub(replace, value) if "${" in value else value
