"""A FastAPI app with unimw as middleware, as a user would write it; served by uvicorn in the bench.

The policy file comes from ``UNIMW_BENCH_CONFIG``:
``UNIMW_BENCH_CONFIG=policy.yaml uvicorn bench.fastapi_app:app``.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from unimw import UnimwMiddleware

app = FastAPI()
app.add_middleware(UnimwMiddleware, config=os.environ["UNIMW_BENCH_CONFIG"])


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
