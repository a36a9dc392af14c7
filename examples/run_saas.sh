#!/usr/bin/env bash
# Run the SaaS example (examples/saas/) on the offline mock provider: organisations on plans in the
# app's own SQLite database, API keys it issues, spend by tenant and feature. Sets up .venv on first use.
# `--once` runs a scripted demo (examples/saas/demo.py, with the openai SDK), prints the spend report, exits.
set -euo pipefail
cd "$(dirname "$0")/.."
source examples/demo.sh
PORT="${PORT:-8002}"

venv_with saas-example

data="$(mktemp -d)"
export SAAS_USAGE="$data/usage.jsonl"  # the app's database is a fresh one of its own, in another temporary folder
.venv/bin/python -m uvicorn --factory examples.saas.app:create_app --host 127.0.0.1 --port "$PORT" --log-level warning &
server=$!
report() {
  # The app writes its last usage records as it shuts down: stop it first.
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  if [ -s "$SAAS_USAGE" ]; then
    echo
    echo "\$ unimw usage --records usage.jsonl --by tenant --by tag:feature"
    .venv/bin/unimw usage --records "$SAAS_USAGE" --by tenant --by tag:feature
  fi
  rm -rf "$data"
}
trap report EXIT
for _ in $(seq 1 100); do
  .venv/bin/python -c "import httpx; httpx.get('http://127.0.0.1:$PORT/health').raise_for_status()" 2>/dev/null && break
  sleep 0.1
done
echo "SaaS example on http://127.0.0.1:$PORT (its own /orgs/..., and /v1/* for API keys it issued)"

if [ "${1:-}" = "--once" ]; then
  .venv/bin/python -m examples.saas.demo "http://127.0.0.1:$PORT"
else
  echo "Serving until Ctrl-C (the spend report follows). Try, with a key printed above:"
  echo "  curl http://127.0.0.1:$PORT/v1/chat/completions -H 'Authorization: Bearer <key>' \\"
  echo "    -H 'Content-Type: application/json' -d '{\"model\": \"cheap\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}'"
  wait "$server" || true
fi
