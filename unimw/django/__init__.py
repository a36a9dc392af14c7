"""unimw inside a Django project: the OpenAI routes as Django views, usage in the app's database.

Add ``"unimw.django"`` to ``INSTALLED_APPS``, ``path("", include("unimw.django.urls"))``
to the URLconf, and a ``UNIMW`` setting::

    UNIMW = {
        "POLICIES": "policies.yaml",          # relative to BASE_DIR
        "IDENTITY": "myapp.llm:identity",     # (request) -> Identity | (tenant, end_user) | tenant | None
        "PREFIX": "v1",
        "USAGE_MODEL": True,                  # one UsageRecord row per call, in the admin
    }

The gateway is built once per process, on first use, and runs on its own
event-loop thread (see :mod:`unimw.django.runtime` for why).
"""

from __future__ import annotations

from unimw.django.runtime import close, flush, get_gateway, lifespan, runtime

__all__ = ["close", "flush", "get_gateway", "lifespan", "runtime"]
