"""The usage admin: read-only, filterable by tenant, plan, model and day, with the spend of what is shown."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.http import HttpRequest, HttpResponse

from unimw.django.models import UsageRecord

#: Rows of the spend table above the list (per day, tenant and model, largest first).
SPEND_ROWS = 50

if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[UsageRecord]
else:  # ModelAdmin is generic only in the type stubs
    _ModelAdmin = admin.ModelAdmin


@admin.register(UsageRecord)
class UsageRecordAdmin(_ModelAdmin):
    list_display = (
        "at",
        "tenant",
        "plan",
        "end_user",
        "model",
        "provider",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "status",
        "stream",
        "cache_hit",
    )
    list_filter = ("tenant", "plan", "model", "provider", "status", "operation", "stream", "cache_hit")
    search_fields = ("request_id", "end_user")
    date_hierarchy = "at"
    show_full_result_count = False

    # Records are the gateway's ledger: nobody edits them from the admin.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: UsageRecord | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: UsageRecord | None = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        changelist = context.get("cl") if context else None
        if context is not None and changelist is not None:
            rows = changelist.queryset.order_by()  # the filtered rows, grouped below
            context["unimw_totals"] = rows.aggregate(
                calls=Count("id"),
                cost_usd=Sum("cost_usd"),
                input_tokens=Sum("input_tokens"),
                output_tokens=Sum("output_tokens"),
            )
            context["unimw_spend"] = list(
                rows.annotate(day=TruncDate("at"))
                .values("day", "tenant", "model")
                .annotate(
                    calls=Count("id"), cost_usd=Sum("cost_usd"), tokens=Sum("input_tokens") + Sum("output_tokens")
                )
                .order_by("-day", "-cost_usd")[:SPEND_ROWS]
            )
        return response
