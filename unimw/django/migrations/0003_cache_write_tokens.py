"""Input tokens a call wrote to the vendor's prompt cache (``cached_tokens`` are those it read)."""

from typing import ClassVar

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies: ClassVar[list[tuple[str, str]]] = [("unimw", "0002_plan_tags_rerouted_from")]

    operations: ClassVar[list[migrations.operations.base.Operation]] = [
        migrations.AddField(
            model_name="usagerecord",
            name="cache_write_tokens",
            field=models.BigIntegerField(default=0),
        ),
    ]
