"""``manage.py unimw_check``: ``unimw check`` on the policy file the settings name."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from unimw.cli import run_check
from unimw.django import conf
from unimw.django.management.output import printed_to


class Command(BaseCommand):
    help = "Validate the policy file of settings.UNIMW and print what it defines."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("config", nargs="?", help="policy file (default: UNIMW['POLICIES'])")

    def handle(self, *args: Any, **options: Any) -> None:
        path = options["config"] or str(conf.read().policies)
        with printed_to(self):
            code = run_check(path)
        if code:
            raise CommandError(f"{path} is not a valid policy", returncode=code)
