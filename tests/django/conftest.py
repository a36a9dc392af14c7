"""Django configured for the tests: SQLite in a temporary folder, Postgres as a second database when there is one.

The policy file the ``UNIMW`` setting names is written by each test's
``site`` fixture (the loopback upstream's URL is known only then); the
gateway is closed after every test, so the next one reads its own policy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import django
import psycopg
import pytest
from django.conf import settings

WORK = Path(tempfile.mkdtemp(prefix="unimw-django-"))
POLICY = WORK / "policies.yaml"
PG_NAME = f"unimw_django_{os.getpid()}"


def _postgres() -> tuple[dict[str, str], str | None]:
    """Connection settings for a fresh Postgres database, or why there is none."""
    reasons = []
    for user in ("postgres", "root"):
        try:
            with psycopg.connect(
                host="127.0.0.1", port=5432, user=user, dbname="postgres", connect_timeout=3, autocommit=True
            ) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{PG_NAME}"')
                conn.execute(f'CREATE DATABASE "{PG_NAME}"')
            return {"USER": user}, None
        except psycopg.Error as error:
            reasons.append(f"{user}: {error}".strip())
    return {}, "; ".join(reasons)


PG, PG_MISSING = _postgres()
DATABASES: dict[str, dict[str, object]] = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(WORK / "db.sqlite3")},
}
if PG:
    DATABASES["pg"] = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": "127.0.0.1",
        "PORT": "5432",
        "NAME": PG_NAME,
        **PG,
    }

settings.configure(
    DEBUG=False,
    SECRET_KEY="unimw-tests-only",
    ALLOWED_HOSTS=["*"],
    USE_TZ=True,
    ROOT_URLCONF="tests.django.site",
    INSTALLED_APPS=[
        "django.contrib.admin",
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
        "unimw.django",
    ],
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "tests.django.site.HostMarker",
    ],
    TEMPLATES=[
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "APP_DIRS": True,
            "OPTIONS": {
                "context_processors": [
                    "django.template.context_processors.request",
                    "django.contrib.auth.context_processors.auth",
                    "django.contrib.messages.context_processors.messages",
                ]
            },
        }
    ],
    DATABASES=DATABASES,
    PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],  # fast logins
    UNIMW={"POLICIES": str(POLICY), "PREFIX": "v1", "USAGE_MODEL": True},
)
django.setup()


@pytest.fixture(scope="session", autouse=True)
def _databases() -> Iterator[None]:
    from django.core.management import call_command
    from django.db import connections

    call_command("migrate", verbosity=0)
    if PG:
        call_command("migrate", "unimw", database="pg", verbosity=0)
    yield
    connections.close_all()
    if PG:
        with psycopg.connect(host="127.0.0.1", port=5432, user=PG["USER"], dbname="postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{PG_NAME}" WITH (FORCE)')
    shutil.rmtree(WORK, ignore_errors=True)


@pytest.fixture(autouse=True)
def _fresh_gateway() -> Iterator[None]:
    """Each test builds the gateway from its own policy; none outlives it."""
    import unimw.django

    unimw.django.close()
    yield
    unimw.django.close()
