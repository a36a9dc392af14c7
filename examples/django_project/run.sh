#!/usr/bin/env bash
# The demo site: migrate, a demo user (demo/demo, an admin), then runserver on 127.0.0.1:8000.
# `run.sh --once`: start it on a free port with a throwaway database, ask once with the openai SDK, stop.
set -euo pipefail
cd "$(dirname "$0")/../.."
source examples/demo.sh
venv_with django-example  # sets up .venv on first use, like the other examples
cd examples/django_project
PY="$PWD/../../.venv/bin/python"
export PYTHONPATH="$PWD/../..${PYTHONPATH:+:$PYTHONPATH}"

if [ "${1:-}" = "--once" ]; then
  tmp="$(mktemp -d)"
  export DEMO_DB="$tmp/db.sqlite3"
fi

"$PY" manage.py migrate --verbosity 0
"$PY" manage.py shell --verbosity 0 -c "
from django.contrib.auth.models import User
if not User.objects.filter(username='demo').exists():
    User.objects.create_superuser('demo', 'demo@example.com', 'demo')
"

if [ "${1:-}" != "--once" ]; then
  echo "Log in at http://127.0.0.1:8000/ as demo/demo; the usage admin is at /admin/unimw/usagerecord/"
  exec "$PY" manage.py runserver 127.0.0.1:8000
fi

port="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$PY" manage.py runserver "127.0.0.1:$port" --noreload >"$tmp/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 1 100); do
  "$PY" -c "import httpx; httpx.get('http://127.0.0.1:$port/accounts/login/').raise_for_status()" 2>/dev/null && break
  sleep 0.1
done
"$PY" ask_once.py "http://127.0.0.1:$port"
# The server writes its rows off the request path: wait (bounded) for both.
"$PY" manage.py shell --verbosity 0 -c "
import time
from unimw.django.models import UsageRecord
deadline = time.monotonic() + 5
while UsageRecord.objects.count() < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
print('usage rows:', UsageRecord.objects.count())
"
