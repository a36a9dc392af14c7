"""``manage.py unimw_usage``: ``unimw usage`` (each tenant's spend and remaining limits) for the settings' policy."""

from __future__ import annotations

import asyncio
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from unimw.cli import run_usage
from unimw.django import conf
from unimw.django.management.output import printed_to


class Command(BaseCommand):
    help = "Print each tenant's spend and remaining limits from the policy's limit store."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--config", help="policy file (default: UNIMW['POLICIES'])")
        parser.add_argument("--tenant", help="only this tenant (also one the policy does not declare)")
        parser.add_argument("--plan", help="the plan of an undeclared --tenant (default: tenancy.default_plan)")
        parser.add_argument("--json", action="store_true", dest="as_json", help="print one JSON document")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["plan"] is not None and options["tenant"] is None:
            # As `unimw usage` refuses it: a bad argument, status 2.
            raise CommandError("--plan needs --tenant", returncode=2)
        path = options["config"] or str(conf.read().policies)
        with printed_to(self):
            code = asyncio.run(run_usage(path, options["tenant"], plan=options["plan"], as_json=options["as_json"]))
        if code:
            raise CommandError(f"unimw usage failed for {path}", returncode=code)
