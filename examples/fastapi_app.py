"""An existing FastAPI app (a tiny notes service) with unimw mounted by one line.

Run it with ``bash examples/run.sh``, or ``uvicorn examples.fastapi_app:app``.
Its own routes keep working; ``/v1/*`` is answered by unimw from
``policies.yaml`` (set UNIMW_CONFIG to use another file).
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from unimw import UnimwMiddleware

POLICY = os.environ.get("UNIMW_CONFIG", str(Path(__file__).resolve().parent.parent / "policies.yaml"))


class Note(BaseModel):
    text: str


app = FastAPI(title="Notes")
notes: dict[int, Note] = {}


@app.get("/notes")
async def list_notes() -> dict[int, Note]:
    return notes


@app.post("/notes", status_code=201)
async def add_note(note: Note) -> dict[str, int]:
    note_id = len(notes) + 1
    notes[note_id] = note
    return {"id": note_id}


@app.get("/notes/{note_id}")
async def get_note(note_id: int) -> Note:
    if note_id not in notes:
        raise HTTPException(404, "no such note")
    return notes[note_id]


# The one line that puts an OpenAI-compatible API into this app:
app.add_middleware(UnimwMiddleware, config=POLICY)

# Tracing, if asked: UNIMW_OTEL=console prints each request's span with its LLM calls' spans under it;
# UNIMW_OTEL=otlp sends them where the standard OTEL_EXPORTER_OTLP_* variables say (pip install 'unimw[otel]').
if exporter := os.environ.get("UNIMW_OTEL"):
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    from unimw.cli import configure_otel

    configure_otel(exporter)
    app.add_middleware(OpenTelemetryMiddleware, exclude_spans=["receive", "send"])
