"""The feedback store over HTTP: a JSON API for annotation tools and trainers, and the labelling page.

Endpoints (``rewardhub feedback serve --db F`` starts them with uvicorn):

====================  ==========================================================================================
``GET /``             the labelling page (``?annotator=NAME``): the next open queue item, rate it or pick A/B
``POST /label``       the page's form post (CSRF-checked); redirects back to the page
``POST /login``       the login form's post (``token``): sets the session cookie (``/?token=`` does the same)
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
a score off the scale, an unknown item, a lone surrogate) is answered 400 with the store's message. Who may
call what (the token, sessions, CSRF, the body limit, bad UTF-8) is :mod:`.security`'s job, in front of
every route.
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

from .page import render_page, security_headers
from .security import DEFAULT_MAX_BODY_KB, Guard, Sessions, check_token, login_response, query_without_token
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


def create_app(store: FeedbackStore, token: str | None = None, max_body_kb: float = DEFAULT_MAX_BODY_KB) -> FastAPI:
    """The FastAPI application serving ``store`` (endpoints are plain functions, run in FastAPI's thread pool;
    the store gives each thread its own SQLite connection).

    ``token``: required on every request when given (see :mod:`.security`); ``max_body_kb``: the largest
    request body accepted (larger: 413).
    """
    if not max_body_kb > 0:
        raise DataError(f"max_body_kb must be > 0, got {max_body_kb}")
    sessions = Sessions(check_token(token))
    app = FastAPI(title="rewardhub feedback", description="Human ratings and preference pairs for rewardhub",
                  version="1")
    app.add_middleware(Guard, sessions=sessions, max_body=int(max_body_kb * 1024))

    @app.exception_handler(DataError)
    async def _refused(request: Request, exc: DataError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(UnicodeError)
    async def _not_text(request: Request, exc: UnicodeError):  # a safety net: validation refuses these first
        return JSONResponse({"detail": f"the request holds text that is not valid Unicode ({exc})"}, status_code=400)

    def _page(request: Request, item, annotator: str, after: int, error: str = "", status: int = 200,
              sid: str | None = None) -> HTMLResponse:
        """The page with a CSRF token for this browser's session (a new session cookie when it has none)."""
        sid = sid or request.scope.get("rewardhub.session")
        cookie = None
        if sid is None:
            sid, cookie = sessions.new_cookie()
        html = render_page(item, annotator, after, store.scale, store.counts(), error, csrf=sessions.csrf(sid))
        response = HTMLResponse(html, status_code=status, headers=security_headers())
        if cookie is not None:
            response.headers.append("set-cookie", sessions.set_cookie_header(cookie, request.url.scheme == "https"))
        return response

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request, annotator: str = "", after: int = 0, token: str | None = None) -> HTMLResponse:
        if request.scope.get("rewardhub.auth") == "login" and token is not None:
            return login_response(sessions, token, query_without_token(request.scope["query_string"]),
                                  request.url.scheme == "https")
        return _page(request, store.next_open(annotator, after), annotator, after)

    @app.post("/login")
    async def login(request: Request):
        form = _form(await request.body())
        return login_response(sessions, form.get("token", ""), {"annotator": form.get("annotator", "")},
                              request.url.scheme == "https")

    @app.post("/label")
    async def label_form(request: Request):
        form = _form(await request.body())
        annotator = form.get("annotator", "")
        sid = request.scope.get("rewardhub.session")
        if request.scope.get("rewardhub.auth") != "bearer" and not sessions.check_csrf(sid, form.get("csrf")):
            return _page(request, None, annotator, 0, "This form is stale or came from another page (its CSRF "
                         "token does not match this browser's session), so nothing was stored. The page below "
                         "is fresh: label the item again.", status=403)
        try:
            item_id = int(form.get("item", ""))
        except ValueError:
            return _page(request, None, annotator, 0, "the form has no valid item id; reload the page", status=400)
        try:  # SQLite calls block: keep them off the event loop, as FastAPI does for plain endpoints
            await run_in_threadpool(store.label_item, item_id, annotator, score=form.get("score"),
                                    choice=form.get("choice"))
        except DataError as exc:
            item = store.get_item(item_id) if _exists(store, item_id) else None
            return _page(request, item, annotator, 0, str(exc), status=400)
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


def _form(body: bytes) -> dict[str, str]:
    """A urlencoded form (the guard has checked it is UTF-8); the last value of a repeated field wins."""
    return {k: v[-1] for k, v in parse_qs(body.decode("utf-8"), errors="strict").items()}


def _exists(store: FeedbackStore, item_id: int) -> bool:
    try:
        store.get_item(item_id)
    except DataError:
        return False
    return True


def serve(store: FeedbackStore, host: str = "127.0.0.1", port: int = 8765, log_level: str = "info",
          token: str | None = None, max_body_kb: float = DEFAULT_MAX_BODY_KB) -> None:
    """Run the API and the page until interrupted (blocking); refuses a non-loopback ``host`` without a token."""
    import uvicorn

    from .security import check_bind

    token = check_token(token)
    check_bind(host, token)
    uvicorn.run(create_app(store, token, max_body_kb), host=host, port=port, log_level=log_level)
