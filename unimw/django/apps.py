"""The Django app: label ``unimw`` (tables ``unimw_*``), the gateway left to first use."""

from __future__ import annotations

from django.apps import AppConfig


class UnimwConfig(AppConfig):
    name = "unimw.django"
    label = "unimw"
    verbose_name = "LLM gateway"
    default_auto_field = "django.db.models.BigAutoField"
