"""The usage table, with indexes on the time of the call, per tenant and per model."""

from typing import ClassVar

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies: ClassVar[list[tuple[str, str]]] = []

    operations: ClassVar[list[migrations.operations.base.Operation]] = [
        migrations.CreateModel(
            name="UsageRecord",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("at", models.DateTimeField(db_index=True)),
                ("request_id", models.CharField(max_length=100)),
                ("tenant", models.CharField(blank=True, max_length=200, null=True)),
                ("end_user", models.CharField(blank=True, max_length=200, null=True)),
                ("model", models.CharField(max_length=200)),
                ("provider", models.CharField(blank=True, max_length=200, null=True)),
                ("upstream_model", models.CharField(blank=True, max_length=200, null=True)),
                ("input_tokens", models.BigIntegerField()),
                ("output_tokens", models.BigIntegerField()),
                ("cached_tokens", models.BigIntegerField()),
                ("reasoning_tokens", models.BigIntegerField()),
                ("cost_usd", models.FloatField()),
                ("latency_ms", models.FloatField()),
                ("cache_hit", models.BooleanField()),
                ("status", models.CharField(max_length=20)),
                ("stream", models.BooleanField()),
                ("timestamp", models.FloatField()),
                ("operation", models.CharField(default="chat", max_length=100)),
            ],
            options={
                "verbose_name": "usage record",
                "ordering": ["-at"],
                "indexes": [
                    models.Index(fields=["tenant", "at"], name="unimw_usage_tenant_at"),
                    models.Index(fields=["model", "at"], name="unimw_usage_model_at"),
                ],
            },
        ),
    ]
