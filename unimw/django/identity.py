"""Who is calling a Django view: a bearer key for the policy's tenant sources, or the logged-in user.

A request with ``Authorization: Bearer <key>`` is a program: the policy's
``tenancy.resolve`` sources decide from its headers, and no CSRF token is
asked for (a browser does not add that header on its own). Any other request
must carry a session-authenticated user, and then CSRF protection applies to
its unsafe methods, as for any form of the site; its identity is the
``IDENTITY`` callable's answer, or the user's username under the policy's
default tenant.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware

from unimw.errors import AuthenticationFailed, PermissionDenied
from unimw.gateway import Gateway, Inbound
from unimw.identity import Identity
from unimw.notation import load_callable
from unimw.tenants import Caller

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def has_bearer(headers: dict[str, str]) -> bool:
    scheme, _, key = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(key.strip())


async def inbound(request: HttpRequest, gateway: Gateway, rid: str) -> Inbound:
    """What the gateway is told about the caller of ``request``; 401 / 403 raised here."""
    headers = {name.lower(): value for name, value in request.headers.items()}
    if has_bearer(headers):
        return Inbound(headers, getattr(request, "scope", None), rid)
    user = await _session_user(request)
    if user is None:
        raise AuthenticationFailed(
            "No API key and no logged-in user. Pass a valid key as 'Authorization: Bearer <key>' or log in."
        )
    if request.method not in _SAFE_METHODS and await sync_to_async(_csrf_refused)(request):
        raise PermissionDenied(
            "CSRF verification failed: a logged-in browser call needs the CSRF token in the X-CSRFToken header.",
            code="csrf_failed",
        )
    caller = await _caller(request, user, gateway)
    if isinstance(caller, Identity):  # a tenant of the app's own, with its plan
        return Inbound(headers, None, rid, caller=Caller(caller.tenant, user.get_username()), identity=caller)
    return Inbound(headers, None, rid, caller=caller)


async def _session_user(request: HttpRequest) -> Any:
    auser = getattr(request, "auser", None)  # set by AuthenticationMiddleware
    if auser is None:
        return None
    user = await auser()
    return user if user.is_authenticated else None


def _unprotected(request: HttpRequest) -> HttpResponse:
    return HttpResponse()


def _csrf_refused(request: HttpRequest) -> bool:
    """Django's own CSRF check, as CsrfViewMiddleware would have made it had the view not been exempt."""
    check = CsrfViewMiddleware(_unprotected)
    check.process_request(request)
    return check.process_view(request, _unprotected, (), {}) is not None


@functools.cache
def _identity_function(path: str) -> Any:
    return load_callable(path)


async def _caller(request: HttpRequest, user: Any, gateway: Gateway) -> Caller | Identity:
    from unimw.django import conf

    username = user.get_username()
    path = conf.read().identity
    answer: Any = None
    if path is not None:
        function = _identity_function(path)
        if inspect.iscoroutinefunction(function):
            answer = await function(request)
        else:  # it may use the ORM: not on the event loop
            answer = await sync_to_async(function)(request)
            if inspect.isawaitable(answer):
                answer = await answer
    if isinstance(answer, Identity):
        return answer
    if answer is None:
        tenant, end_user = None, username
    elif isinstance(answer, str):
        tenant, end_user = answer, username
    else:
        tenant, end_user = answer
    policy = gateway.live_policy  # the policy now in force, after any reload
    if tenant is None and policy.tenants and policy.tenancy.default is None:
        # The gateway would take no tenant as "unmetered"; a logged-in user must still be somebody's.
        raise AuthenticationFailed(f"No tenant for user {username!r}: the policy has no default tenant.")
    return Caller(tenant, end_user)
