"""The migrations make the table the model describes: a field added without its migration fails here."""

from __future__ import annotations

from io import StringIO

from django.core.management import call_command
from django.db import connections


def test_migrations_match_the_model() -> None:
    out = StringIO()
    call_command("makemigrations", "unimw", "--check", "--dry-run", stdout=out)  # exits 1 on a missing migration
    assert out.getvalue() == "No changes detected in app 'unimw'\n"


def test_the_usage_table_has_the_record_columns() -> None:
    from unimw.django.models import UsageRecord as Row

    with connections["default"].cursor() as cursor:
        columns = {
            c.name for c in connections["default"].introspection.get_table_description(cursor, "unimw_usagerecord")
        }
    assert columns == {"id", "at", *Row.RECORD_FIELDS}
