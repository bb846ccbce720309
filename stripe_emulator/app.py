"""Placeholder Stripe emulator: starts and answers /health.

The full emulator (issue [emulator]) replaces this module's `app`.
"""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI(title="Penny Stripe emulator")


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
