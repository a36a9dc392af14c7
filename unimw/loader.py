"""policies.yaml → :class:`~unimw.policy.Policy`, with errors that point at a line.

The YAML is composed into nodes (which know their line), built into plain
data, and ``${VAR}`` / ``${VAR:-default}`` references in string values are
replaced from the environment: after parsing, so a value can never inject
YAML. Every problem (bad YAML, a duplicate key, a missing variable, a
wrong field, a dangling reference) is a :class:`ConfigError` naming the
file, the line and the reason.

A provider's ``kind`` and ``options`` are checked here, against the adapter
registry, so that the policy itself depends on no adapter. The YAML is
bounded before anything is built from it: an alias inside its own anchor,
or aliases that multiply a few lines into millions of values, are refused.

PyYAML is imported when a YAML text is first read: a policy given as data
(``Gateway.from_dict``) never needs it.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path as FilePath
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from unimw import _read_as_unimw
from unimw.adapters import ADAPTERS
from unimw.policy import Path, Policy, PolicyError, Provider
from unimw.stores import check_url

if TYPE_CHECKING:
    import yaml

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: Values aliases may add beyond those the file writes out: plenty for sharing settings, and a bound on
#: the work of building (each aliased value is built again at every place it is used).
MAX_ALIASED_VALUES = 100_000
_MERGE = "tag:yaml.org,2002:merge"


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
    except ValidationError as exc:
        raise _validation_error(exc, (), source, lines) from exc
    policy = policy.model_copy(
        update={"providers": {name: _with_options(name, p, source, lines) for name, p in policy.providers.items()}}
    )
    try:
        policy.check()
    except PolicyError as exc:
        raise ConfigError(exc.message, source=source, line=_line(lines, exc.path)) from exc
    for path, url in ((("tenancy", "store"), policy.tenancy.store), (("cache", "store"), policy.cache.store)):
        try:
            check_url(url)
        except ValueError as exc:
            raise ConfigError(f"{'.'.join(path)}: {exc}", source=source, line=_line(lines, path)) from exc
    return policy


def _with_options(name: str, provider: Provider, source: str, lines: Mapping[Path, int]) -> Provider:
    """The provider with its kind checked and its options as its adapter reads them (durations in seconds, ...)."""
    kind = ADAPTERS.get(provider.kind)
    if kind is None:
        path: Path = ("providers", name, "kind")
        reason = f"unknown provider kind {provider.kind!r}; known kinds: {', '.join(sorted(ADAPTERS))}"
        raise ConfigError(f"{'.'.join(map(str, path))}: {reason}", source=source, line=_line(lines, path))
    where: Path = ("providers", name, "options")
    model = kind.options_model()
    takes = model.model_fields
    if unknown := sorted(set(provider.options) - takes.keys()):
        reason = (
            f"unknown option(s) {', '.join(unknown)} for kind {provider.kind!r}; it takes: {', '.join(sorted(takes))}"
        )
        line = _line(lines, (*where, unknown[0]))
        raise ConfigError(f"{'.'.join(map(str, where))}: {reason}", source=source, line=line)
    try:
        options = model.model_validate(provider.options)
    except ValidationError as exc:
        raise _validation_error(exc, where, source, lines) from exc
    # Only what the file sets (null is unset): each adapter keeps its own defaults for the rest.
    return provider.model_copy(update={"options": options.model_dump(exclude_unset=True, exclude_none=True)})


def _validation_error(exc: ValidationError, at: Path, source: str, lines: Mapping[Path, int]) -> ConfigError:
    """The first of pydantic's errors, for a value at path ``at``, as a ConfigError at its line."""
    error = exc.errors()[0]
    path = (*at, *error["loc"])
    # A tagged union repeats its tag in the path (resolve.0.header.header): say it once.
    parts = [str(p) for i, p in enumerate(path) if i == 0 or p != path[i - 1]]
    where = ".".join(parts) or "policy"
    extra = "" if exc.error_count() == 1 else f" (and {exc.error_count() - 1} more)"
    return ConfigError(f"{where}: {_reason(error)}{extra}", source=source, line=_line(lines, path))


def policy_schema() -> dict[str, Any]:
    """The JSON Schema of a policy file, for editors and ``unimw schema``.

    The :class:`~unimw.policy.Policy` model's, with what the registry adds:
    the known kinds, and for each the options it takes.
    """
    schema = Policy.model_json_schema()
    defs = schema["$defs"]
    provider = defs["Provider"]
    provider["properties"]["kind"]["enum"] = sorted(ADAPTERS)
    provider["allOf"] = [_options_rule(name, kind.options_model(), defs) for name, kind in sorted(ADAPTERS.items())]
    return {"$schema": schema.pop("$schema"), **schema}


def _options_rule(kind: str, options: type[BaseModel], defs: dict[str, Any]) -> dict[str, Any]:
    """``options`` follows ``options``' model when the provider is of ``kind``; the model joins ``defs``."""
    schema = options.model_json_schema(ref_template="#/$defs/{model}")
    for name, definition in {**schema.pop("$defs", {}), options.__name__: schema}.items():
        if defs.setdefault(name, definition) != definition:
            raise ValueError(f"two schema definitions are named {name}")
    return {
        "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
        "then": {"properties": {"options": {"$ref": f"#/$defs/{options.__name__}"}}},
    }


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


@functools.cache
def _loader_class() -> type[yaml.SafeLoader]:
    """The loader class, defined on first use so that PyYAML is imported only then."""
    import yaml

    class _Loader(yaml.SafeLoader):
        """PyYAML's safe loader, refusing an alias met inside the node its anchor names.

        PyYAML builds such a node into a container that holds itself, which no
        walk over it can finish.
        """

        def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()  # type: ignore[no-untyped-call]
                target = self.anchors.get(event.anchor)
                # A collection gets its end mark once its last child is composed.
                if target is not None and target.end_mark is None:
                    raise yaml.composer.ComposerError(None, None, "a YAML alias refers to itself", event.start_mark)
            return super().compose_node(parent, index)

    return _Loader


def _compose(text: str, source: str, env: Mapping[str, str]) -> tuple[Any, dict[Path, int]]:
    import yaml

    loader = _loader_class()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        _check_keys_and_size(loader, node, source)
        data = loader.construct_document(node)
        lines: dict[Path, int] = {(): node.start_mark.line + 1}
        return _walk(loader, node, data, (), lines, source, env), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = f"invalid YAML: {exc.problem or exc.context}"
        raise ConfigError(reason, source=source, line=mark.line + 1 if mark else None) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", source=source) from exc
    except RecursionError as exc:
        # PyYAML composes nested collections by recursion, as the checks below walk them.
        raise ConfigError("invalid YAML: the document nests too deeply", source=source) from exc
    finally:
        loader.dispose()


def _check_keys_and_size(loader: yaml.SafeLoader, root: yaml.Node, source: str) -> None:
    """Refuse a key written twice in one mapping, and aliases that expand past :data:`MAX_ALIASED_VALUES`.

    Runs on the composed nodes, before anything is built: building merges
    ``<<`` keys into their mappings (a merged key may then be written again,
    to override it), and repeats an aliased node at every place it is used.
    """
    import yaml

    sizes: dict[int, int] = {}  # id(node) -> values it expands to, each node counted once

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            _refuse_duplicate_keys(loader, node, source)
            total += sum(size(key) + size(value) for key, value in node.value)
        sizes[id(node)] = total
        return total

    expanded = size(root)
    if expanded - len(sizes) > MAX_ALIASED_VALUES:
        raise ConfigError(
            f"YAML aliases expand to {expanded} values, more than {MAX_ALIASED_VALUES} beyond those written",
            source=source,
            line=root.start_mark.line + 1,
        )


def _refuse_duplicate_keys(loader: yaml.SafeLoader, node: yaml.MappingNode, source: str) -> None:
    import yaml

    seen: set[Any] = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE:
            continue  # a collection as a key is refused when built; merges may repeat
        key = loader.construct_object(key_node)
        if key in seen:
            raise ConfigError(f"duplicate key {key!r}", source=source, line=key_node.start_mark.line + 1)
        seen.add(key)


def _walk(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    value: Any,
    path: Path,
    lines: dict[Path, int],
    source: str,
    env: Mapping[str, str],
) -> Any:
    """Record each value's line and return the value with its strings interpolated.

    Mappings and lists are rebuilt, never changed in place: an alias makes
    one constructed container appear at several paths, and interpolating it
    in place would expand an environment value's own ``${...}`` on the next
    visit. Each path is still walked, so it records its own lines.
    """
    import yaml

    if isinstance(node, yaml.MappingNode) and isinstance(value, dict):
        # Merged (``<<``) pairs come first: a later pair with the same key overrides, as when built.
        pairs = [(loader.construct_object(key_node), key_node, value_node) for key_node, value_node in node.value]
        last = {key: i for i, (key, _, _) in enumerate(pairs)}
        built: dict[Any, Any] = {}
        for i, (key, key_node, value_node) in enumerate(pairs):
            if last[key] != i:
                continue
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


# Loaded with the first policy or gateway, maybe after unimw's names were first read: its public names (and
# those of the modules it loaded) read as unimw's too, as those loaded with ``from unimw import Gateway`` do.
_read_as_unimw()
