#!/usr/bin/env bash
# The whole test suite, from nothing: a virtualenv with unimw and its test
# extras, Redis if it is not already answering, then lint, types and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

.venv/bin/ruff check unimw tests bench examples
.venv/bin/ruff format --check unimw tests bench examples
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
