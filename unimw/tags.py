"""Tags: what a call is for (feature, team, experiment), for records, spans and the cost metric.

They come from the request's ``metadata`` (OpenAI's own field: at most 16
string pairs, keys up to 64 characters, values up to 512) and from an
``X-Unimw-Tags: feature=search, team=core`` header, which wins on a shared
key. Both are the caller's to write, so both are bounded the same way;
only the keys the policy names (``usage.tags``) reach metric attributes,
so a caller cannot blow up a metric's cardinality.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unimw.errors import InvalidRequest
from unimw.notation import TAG_KEY

MAX_TAGS = 16
MAX_VALUE = 512
HEADER = "x-unimw-tags"


def tags_of(body: Mapping[str, Any], headers: Mapping[str, str]) -> dict[str, str]:
    """A call's tags: metadata's well-formed string pairs, then the header's (a malformed header is a 400)."""
    tags: dict[str, str] = {}
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        for key, value in metadata.items():
            if len(tags) == MAX_TAGS:
                break
            if isinstance(value, str) and len(value) <= MAX_VALUE and TAG_KEY.match(key):
                tags[key] = value
    header = headers.get(HEADER)
    if header:
        tags.update(_parse(header))
        if len(tags) > MAX_TAGS:
            raise _bad(f"at most {MAX_TAGS} tags, with metadata's")
    return tags


def _parse(header: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in header.split(","):
        key, equals, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not equals or not TAG_KEY.match(key):
            raise _bad(f"{item.strip()[:80]!r} is not key=value with a key of letters, digits, _ . -")
        if len(value) > MAX_VALUE:
            raise _bad(f"the value of {key!r} is longer than {MAX_VALUE} characters")
        pairs[key] = value
        if len(pairs) > MAX_TAGS:
            raise _bad(f"at most {MAX_TAGS} tags")
    return pairs


def _bad(why: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid X-Unimw-Tags header: {why}.", param="X-Unimw-Tags", code="invalid_tags")
