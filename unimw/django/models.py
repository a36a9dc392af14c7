"""``UsageRecord`` rows: one per settled call, with the fields of :class:`unimw.records.UsageRecord`."""

from __future__ import annotations

import datetime
from typing import ClassVar

from django.db import models


class UsageRecord(models.Model):
    """What one call used and cost; ``at`` is ``timestamp`` as a date-time, indexed for day and month views."""

    #: The fields copied as they are from :class:`unimw.records.UsageRecord`.
    RECORD_FIELDS: ClassVar[tuple[str, ...]] = (
        "request_id",
        "tenant",
        "end_user",
        "model",
        "provider",
        "upstream_model",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "cost_usd",
        "latency_ms",
        "cache_hit",
        "status",
        "stream",
        "timestamp",
        "operation",
        "plan",
        "tags",
        "rerouted_from",
        "cache_write_tokens",
        "arm",
    )

    at: models.DateTimeField[datetime.datetime, datetime.datetime] = models.DateTimeField(db_index=True)
    request_id: models.CharField[str, str] = models.CharField(max_length=100)
    tenant: models.CharField[str | None, str | None] = models.CharField(max_length=200, null=True, blank=True)
    end_user: models.CharField[str | None, str | None] = models.CharField(max_length=200, null=True, blank=True)
    model: models.CharField[str, str] = models.CharField(max_length=200)
    provider: models.CharField[str | None, str | None] = models.CharField(max_length=200, null=True, blank=True)
    upstream_model: models.CharField[str | None, str | None] = models.CharField(max_length=200, null=True, blank=True)
    input_tokens: models.BigIntegerField[int, int] = models.BigIntegerField()
    output_tokens: models.BigIntegerField[int, int] = models.BigIntegerField()
    cached_tokens: models.BigIntegerField[int, int] = models.BigIntegerField()
    reasoning_tokens: models.BigIntegerField[int, int] = models.BigIntegerField()
    cost_usd: models.FloatField[float, float] = models.FloatField()
    latency_ms: models.FloatField[float, float] = models.FloatField()
    cache_hit: models.BooleanField[bool, bool] = models.BooleanField()
    status: models.CharField[str, str] = models.CharField(max_length=20)
    stream: models.BooleanField[bool, bool] = models.BooleanField()
    timestamp: models.FloatField[float, float] = models.FloatField()
    operation: models.CharField[str, str] = models.CharField(max_length=100, default="chat")
    plan: models.CharField[str | None, str | None] = models.CharField(max_length=200, null=True, blank=True)
    #: At most 16 pairs of short strings (the gateway bounds them), so a JSON column rather than a table.
    tags: models.JSONField[dict[str, str], dict[str, str]] = models.JSONField(default=dict)
    rerouted_from: models.CharField[str | None, str | None] = models.CharField(max_length=200, null=True, blank=True)
    cache_write_tokens: models.BigIntegerField[int, int] = models.BigIntegerField(default=0)
    arm: models.CharField[str | None, str | None] = models.CharField(max_length=200, null=True, blank=True)

    class Meta:
        verbose_name = "usage record"
        indexes: ClassVar[list[models.Index]] = [
            models.Index(fields=["tenant", "at"], name="unimw_usage_tenant_at"),
            models.Index(fields=["model", "at"], name="unimw_usage_model_at"),
        ]
        ordering: ClassVar[list[str]] = ["-at"]

    def __str__(self) -> str:
        return f"{self.request_id} {self.tenant or '-'} {self.model}"
