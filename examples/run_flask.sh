#!/usr/bin/env bash
# Run the example Flask app with unimw mounted, under gunicorn's threaded workers, on the
# offline mock provider, and show it answering. Sets up .venv on first use. `--once` exits after the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-8001}"

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[wsgi]" "flask>=3" "gunicorn>=23"

.venv/bin/python -m gunicorn -k gthread --threads 8 -w 2 --bind "127.0.0.1:$PORT" --log-level warning \
  examples.flask_app:app &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  .venv/bin/python -c "import httpx, sys; httpx.get('http://127.0.0.1:$PORT/notes')" 2>/dev/null && break
  sleep 0.1
done
echo "Example Flask app with unimw on http://127.0.0.1:$PORT (its own /notes, and /v1/* from policies.yaml)"
.venv/bin/python examples/ask.py "http://127.0.0.1:$PORT"

if [ "${1:-}" != "--once" ]; then
  echo "Serving until Ctrl-C. Try: curl http://127.0.0.1:$PORT/v1/models"
  wait $server
fi
