"""The plan of a call's tenant, its tags, and the name it asked for when its plan rerouted it."""

from typing import ClassVar

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies: ClassVar[list[tuple[str, str]]] = [("unimw", "0001_initial")]

    operations: ClassVar[list[migrations.operations.base.Operation]] = [
        migrations.AddField(
            model_name="usagerecord",
            name="plan",
            field=models.CharField(blank=True, max_length=200, null=True),
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="tags",
            field=models.JSONField(default=dict),
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="rerouted_from",
            field=models.CharField(blank=True, max_length=200, null=True),
        ),
    ]
