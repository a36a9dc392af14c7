#!/usr/bin/env bash
# Run the example FastAPI app with unimw mounted, on the offline mock provider,
# and show it answering. Sets up .venv on first use. `--once` exits after the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
source examples/demo.sh
PORT="${PORT:-8000}"

venv_with "$([ -n "${UNIMW_OTEL:-}" ] && echo examples,otel || echo examples)"  # UNIMW_OTEL=console|otlp: traces too
serve_and_ask "Example app" "$PORT" "${1:-}" -- \
  .venv/bin/python -m uvicorn examples.fastapi_app:app --host 127.0.0.1 --port "$PORT" --log-level warning
