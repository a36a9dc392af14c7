"""The host site of the Django tests: its own page, middleware, login, and an identity on the user's group."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from django.urls import include, path

from unimw import Identity


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"hello {request.user.get_username() or 'anonymous'}")


def csrf(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"token": get_token(request)})


def group_identity(request: HttpRequest) -> tuple[str, str] | None:
    """The tenant is the user's organisation: its first group (a sync ORM query)."""
    group = request.user.groups.order_by("name").first()  # type: ignore[union-attr]
    return (group.name, f"org-user:{request.user.get_username()}") if group is not None else None


def org_identity(request: HttpRequest) -> Identity | None:
    """The user's organisation as the app keeps it: not declared in the policy, on the pro plan."""
    group = request.user.groups.order_by("name").first()  # type: ignore[union-attr]
    return Identity(group.name, plan="pro") if group is not None else None


class HostMarker:
    """A middleware of the host app: marks every response, the gateway's included."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response["x-host-middleware"] = "seen"
        return response


urlpatterns = [
    path("hello/", hello),
    path("csrf/", csrf),
    path("admin/", admin.site.urls),
    path("", include("unimw.django.urls")),
]
