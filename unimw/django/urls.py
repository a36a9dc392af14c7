"""``path("", include("unimw.django.urls"))``: the OpenAI routes under ``UNIMW["PREFIX"]``.

One URL per operation the gateway serves (chat completions and any added
operation), the models list and each model, and an OpenAI-style 404 for
anything else under the prefix.
"""

from __future__ import annotations

import re

from django.urls import URLPattern, path, re_path

from unimw.django import conf, views
from unimw.django.runtime import get_gateway

app_name = "unimw"

_prefix = conf.read().prefix
_base = f"{_prefix}/" if _prefix else ""

urlpatterns: list[URLPattern] = [
    *(
        path(_base + op_path.lstrip("/"), views.operation, {"operation_path": op_path}, name=op.name)
        for op_path, op in get_gateway().operations.items()
    ),
    path(_base + "models", views.models, name="models"),
    path(_base + "models/<path:name>", views.models, name="model"),
]
if _base:
    urlpatterns.append(re_path(rf"^{re.escape(_base)}", views.not_found, name="not_found"))
