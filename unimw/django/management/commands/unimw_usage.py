"""``manage.py unimw_usage``: ``unimw usage`` (each tenant's spend and remaining limits) for the settings' policy."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from unimw.cli import run_usage
from unimw.django import conf


class Command(BaseCommand):
    help = "Print each tenant's spend and remaining limits from the policy's limit store."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--config", help="policy file (default: UNIMW['POLICIES'])")
        parser.add_argument("--tenant", help="only this tenant")

    def handle(self, *args: Any, **options: Any) -> None:
        path = options["config"] or str(conf.read().policies)
        with contextlib.redirect_stdout(self.stdout), contextlib.redirect_stderr(self.stderr):  # type: ignore[type-var]
            code = asyncio.run(run_usage(path, options["tenant"]))
        if code:
            raise CommandError(f"unimw usage failed for {path}", returncode=code)
