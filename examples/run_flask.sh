#!/usr/bin/env bash
# Run the example Flask app with unimw mounted, under gunicorn's threaded workers, on the
# offline mock provider, and show it answering. Sets up .venv on first use. `--once` exits after the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
source examples/demo.sh
PORT="${PORT:-8001}"

venv_with flask-example
serve_and_ask "Example Flask app" "$PORT" "${1:-}" -- \
  .venv/bin/python -m gunicorn -k gthread --threads 8 -w 2 --bind "127.0.0.1:$PORT" --log-level warning \
  examples.flask_app:app
