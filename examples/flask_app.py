"""An existing Flask app (a tiny notes service) with unimw mounted by two lines.

Run it with ``bash examples/run_flask.sh``, or ``gunicorn -k gthread --threads 8
examples.flask_app:app``. Its own routes keep working; ``/v1/*`` is answered
by unimw from ``policies.yaml`` (set UNIMW_CONFIG to use another file).

Who is calling can come from the app's own login: :func:`team_from_session`
reads the Flask session, and a policy names it as a tenant source::

    tenancy:
      resolve: [{callable: "examples.flask_app:team_from_session"}]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask, abort, request, session

from unimw.wsgi import UnimwWSGIMiddleware

POLICY = os.environ.get("UNIMW_CONFIG", str(Path(__file__).resolve().parent.parent / "policies.yaml"))

app = Flask(__name__)
app.secret_key = os.environ.get("FLASK_SECRET_KEY", "dev-only-not-secret")
notes: dict[int, str] = {}


@app.get("/notes")
def list_notes() -> dict[str, str]:
    return {str(note_id): text for note_id, text in notes.items()}


@app.post("/notes")
def add_note() -> tuple[dict[str, int], int]:
    note_id = len(notes) + 1
    notes[note_id] = str((request.get_json(silent=True) or {}).get("text", ""))
    return {"id": note_id}, 201


@app.get("/notes/<int:note_id>")
def get_note(note_id: int) -> dict[str, str]:
    if note_id not in notes:
        abort(404)
    return {"text": notes[note_id]}


@app.post("/login")
def login() -> dict[str, str]:
    """The app's own sign-in, reduced to its result: the session names the user's team."""
    session["team"] = str((request.get_json(silent=True) or {}).get("team", ""))
    return {"team": session["team"]}


def team_from_session(scope: dict[str, Any]) -> str | None:
    """A tenancy source: the team of the signed-in user, from the Flask session of the request.

    unimw answers ``/v1/*`` before Flask sees the request, so the callable
    opens a request context on the WSGI environ the door puts in the scope;
    ``session`` (and extensions built on it) then read the signed cookie.
    """
    with app.request_context(scope["wsgi_environ"]):
        return session.get("team") or None


# The two lines that put an OpenAI-compatible API into this app:
app.wsgi_app = UnimwWSGIMiddleware(app.wsgi_app, config=POLICY)  # type: ignore[method-assign]
