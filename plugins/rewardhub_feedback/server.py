"""The feedback store over HTTP: a JSON API for annotation tools and trainers, and the labelling page.

Endpoints (``rewardhub feedback serve --db F`` starts them with uvicorn):

====================  ==========================================================================================
``GET /``             the labelling page (``?annotator=NAME``): the next open queue item, rate it or pick A/B
``POST /label``       the page's form post; redirects back to the page
``GET /api/next``     ``?annotator=&after=``: ``{"item": {...} | null, "scale": [min, max]}``
``POST /api/label``   ``{"item", "annotator", "score" | "choice": "a"|"b"}``: label a queue item
``POST /api/comparisons`` ``{"prompt", "chosen", "rejected", "annotator"?, "source"?, "metadata"?}``
``POST /api/ratings``  ``{"prompt", "completion", "score", "annotator"?, "source"?, "metadata"?}``
``POST /api/queue``   ``{"prompt", "completions": [one to rate] | [two to compare], "source"?, "required"?}``
``GET /api/stats``    counts (comparisons, pairs, ratings, annotators, queue)
``GET /api/export``   the pairs as JSONL in TRL's preference format (``?raw=true``: every comparison, lossless)
====================  ==========================================================================================

A request whose JSON does not match the shape (a missing or misspelt field, a wrong type) is answered 422 by
FastAPI with the field's location; a well-formed request the store refuses (empty text, chosen == rejected,
a score off the scale, an unknown item) is answered 400 with the store's message.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from rewardhub.errors import DataError

from .page import render_page
from .store import FeedbackStore

Text = str | list[dict[str, Any]]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field ("choosen") is a 422, not silently dropped


class ComparisonIn(_Body):
    prompt: Text
    chosen: Text
    rejected: Text
    annotator: str = ""
    source: str = "api"
    metadata: dict[str, Any] | None = None


class RatingIn(_Body):
    prompt: str
    completion: str
    score: float
    annotator: str = ""
    source: str = "api"
    metadata: dict[str, Any] | None = None


class QueueIn(_Body):
    prompt: str
    completions: list[str] = Field(min_length=1, max_length=2)
    source: str = "api"
    required: int = Field(1, ge=1)
    metadata: dict[str, Any] | None = None


class LabelIn(_Body):
    item: int
    annotator: str = ""
    score: float | None = None
    choice: str | None = None


def create_app(store: FeedbackStore) -> FastAPI:
    """The FastAPI application serving ``store`` (endpoints are plain functions, run in FastAPI's thread pool;
    the store gives each thread its own SQLite connection)."""
    app = FastAPI(title="rewardhub feedback", description="Human ratings and preference pairs for rewardhub",
                  version="1")

    @app.exception_handler(DataError)
    async def _refused(request: Request, exc: DataError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/", response_class=HTMLResponse)
    def page(annotator: str = "", after: int = 0) -> HTMLResponse:
        item = store.next_open(annotator, after)
        return HTMLResponse(render_page(item, annotator, after, store.scale, store.counts()))

    @app.post("/label")
    async def label_form(request: Request):
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        annotator = form.get("annotator", "")
        try:
            item_id = int(form.get("item", ""))
        except ValueError:
            return HTMLResponse(render_page(None, annotator, 0, store.scale, store.counts(),
                                            "the form has no valid item id; reload the page"), status_code=400)
        try:  # SQLite calls block: keep them off the event loop, as FastAPI does for plain endpoints
            await run_in_threadpool(store.label_item, item_id, annotator, score=form.get("score"),
                                    choice=form.get("choice"))
        except DataError as exc:
            return HTMLResponse(render_page(store.get_item(item_id) if _exists(store, item_id) else None,
                                            annotator, 0, store.scale, store.counts(), str(exc)), status_code=400)
        query = urlencode({k: v for k, v in (("annotator", annotator), ("after", item_id)) if v})
        return RedirectResponse(f"/?{query}", status_code=303)

    @app.get("/api/next")
    def next_item(annotator: str = "", after: int = 0) -> dict[str, Any]:
        item = store.next_open(annotator, after)
        return {"item": item.as_dict() if item else None, "scale": list(store.scale)}

    @app.post("/api/label", status_code=201)
    def label(body: LabelIn) -> dict[str, Any]:
        return {"id": store.label_item(body.item, body.annotator, score=body.score, choice=body.choice)}

    @app.post("/api/comparisons", status_code=201)
    def add_comparison(body: ComparisonIn) -> dict[str, Any]:
        return {"id": store.add_comparison(body.prompt, body.chosen, body.rejected, body.annotator, body.source,
                                           body.metadata)}

    @app.post("/api/ratings", status_code=201)
    def add_rating(body: RatingIn) -> dict[str, Any]:
        return {"id": store.add_rating(body.prompt, body.completion, body.score, body.annotator, body.source,
                                       body.metadata)}

    @app.post("/api/queue", status_code=201)
    def enqueue(body: QueueIn) -> dict[str, Any]:
        return {"id": store.enqueue(body.prompt, body.completions, body.source, body.required, body.metadata)}

    @app.get("/api/stats")
    def stats() -> dict[str, Any]:
        return store.stats()

    @app.get("/api/export")
    def export(raw: bool = False) -> StreamingResponse:
        rows = list(store.export_rows(raw))  # read now, so a write during the download cannot tear the file
        lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return StreamingResponse(lines, media_type="application/x-ndjson",
                                 headers={"Content-Disposition": 'attachment; filename="preferences.jsonl"'})

    return app


def _exists(store: FeedbackStore, item_id: int) -> bool:
    try:
        store.get_item(item_id)
    except DataError:
        return False
    return True


def serve(store: FeedbackStore, host: str = "127.0.0.1", port: int = 8765, log_level: str = "info") -> None:
    """Run the API and the page until interrupted (blocking)."""
    import uvicorn

    uvicorn.run(create_app(store), host=host, port=port, log_level=log_level)
