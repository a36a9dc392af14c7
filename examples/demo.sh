# Sourced by the example scripts: the repository's .venv with unimw and an extra, and a server asked once.
# The scripts cd to the repository root first.

# venv_with EXTRA: create .venv on first use and install unimw with EXTRA into it.
venv_with() {
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$1]"
}

# serve_and_ask NAME PORT [--once] -- COMMAND...: run COMMAND (a server on PORT) in the background, wait for
# its /notes, ask it with examples/ask.py, then serve until Ctrl-C (or stop at once with --once).
serve_and_ask() {
  local name="$1" port="$2" once="$3"
  shift 4
  "$@" &
  server=$!
  trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    .venv/bin/python -c "import httpx; httpx.get('http://127.0.0.1:$port/notes')" 2>/dev/null && break
    sleep 0.1
  done
  echo "$name with unimw on http://127.0.0.1:$port (its own /notes, and /v1/* from policies.yaml)"
  .venv/bin/python examples/ask.py "http://127.0.0.1:$port"
  if [ "$once" != "--once" ]; then
    echo "Serving until Ctrl-C. Try: curl http://127.0.0.1:$port/v1/models"
    wait $server
  fi
}
