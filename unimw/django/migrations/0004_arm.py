"""The arm of a sticky weighted alias the caller was placed on."""

from typing import ClassVar

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies: ClassVar[list[tuple[str, str]]] = [("unimw", "0003_cache_write_tokens")]

    operations: ClassVar[list[migrations.operations.base.Operation]] = [
        migrations.AddField(
            model_name="usagerecord",
            name="arm",
            field=models.CharField(blank=True, max_length=200, null=True),
        ),
    ]
