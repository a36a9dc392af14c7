#!/usr/bin/env bash
# The whole test suite, from nothing: a virtualenv with unimw and its test
# extras, Redis (installed with apt-get if missing) and PostgreSQL started if
# they are not already answering, then lint, types and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'

if ! command -v redis-server >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# The Django usage model is also tested on PostgreSQL (required when CI is set): start it if it is installed but down.
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432 && command -v service >/dev/null; then
  service postgresql start >/dev/null 2>&1 || true
  for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.1; done
fi

.venv/bin/ruff check unimw tests bench examples
.venv/bin/ruff format --check unimw tests bench examples
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
