"""A small OpenAI-compatible server for a local transformers causal LM (``rewardhub serve``).

It serves ``GET /v1/models``, ``POST /v1/chat/completions`` (non-streaming, ``n=1``; messages rendered with
the tokenizer's chat template; ``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``seed``; usage counts)
and ``GET /health``, so the ``judge`` reward (or any OpenAI client) can use a local model with no network.
:mod:`rewardhub_judge.completions` adds what an RL trainer samples rollouts from: token-id
``/v1/completions`` with log-probs, LoRA adapters and full-weight updates
(:class:`rewardhub.generation_server.ServerBackend` is its client).
It is meant for a judge during training and for tests, not as a production server: requests are answered
one generation at a time (one model, one lock), and it has no batching or streaming. vLLM and SGLang serve
the same API at scale.

A request whose client disconnects (the judge's timeout closes the connection) is dropped: if it is still
waiting for the model it never starts, and a generation in progress stops at its next token (a stopping
criterion that reads the request's cancel flag). So abandoned requests do not pile up behind the lock, the
way vLLM aborts a request on disconnect. ``/health`` reports ``in_flight`` and ``cancelled``.

:class:`ServerThread` runs it on a daemon thread (tests, examples, notebooks) through the core's
:class:`rewardhub.http_server.AppThread`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from rewardhub.http_server import AppThread

log = logging.getLogger(__name__)

#: ``max_tokens`` when a request gives none (OpenAI's own default depends on the model).
DEFAULT_MAX_TOKENS = 256


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """The fields of an OpenAI chat request this server honours; others are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int = 1
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None


class RequestError(Exception):
    """A request the server refuses, answered as an OpenAI-style error body with ``status``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", retry: bool = False):
        super().__init__(message)
        self.status, self.message, self.kind, self.retry = status, message, kind, retry


class LocalModel:
    """A causal LM and its tokenizer behind a lock: chat messages in, text and token counts out."""

    def __init__(self, model, tokenizer, name: str):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.lock = threading.Lock()
        self.requests = 0
        self.in_flight = 0
        self.cancelled = 0
        self.adapters: dict[str, str] = {}  # LoRA adapter name -> path (rewardhub_judge.completions loads them)
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        if not self.has_template:
            log.warning("tokenizer of %s has no chat template; messages are joined as 'role: content' lines", name)

    def render(self, messages: list[Message]) -> str:
        turns = [{"role": m.role, "content": _text(m.content)} for m in messages]
        if self.has_template:
            try:
                return self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
            except Exception as exc:  # e.g. a template that rejects the system role
                raise RequestError(400, f"the chat template rejected the messages: {exc}") from exc
        return "".join(f"{t['role']}: {t['content']}\n" for t in turns) + "assistant: "

    @contextmanager
    def holding(self, cancel: threading.Event):
        """Hold the model for one request (one generation at a time), counted in ``requests``.

        While it waits for the model it watches ``cancel``: a client that has gone is not served, and the
        request raises :class:`RequestError` 499, counted in ``cancelled`` (chat and completions alike).
        """
        while not self.lock.acquire(timeout=0.05):
            if cancel.is_set():
                self.cancelled += 1
                raise RequestError(499, "the client closed the request before it started")
        try:
            if cancel.is_set():
                self.cancelled += 1
                raise RequestError(499, "the client closed the request before it started")
            self.requests += 1
            yield
        finally:
            self.lock.release()

    def complete(self, request: ChatRequest, cancel: threading.Event | None = None) -> dict[str, Any]:
        """Generate one reply; raises :class:`RequestError` for requests it cannot serve.

        ``cancel`` set (the client went away): the request stops waiting for the model, or stops generating at
        the next token, and raises :class:`RequestError` 499.
        """
        self.in_flight += 1
        try:
            return self._complete(request, cancel or threading.Event())
        finally:
            self.in_flight -= 1

    def _complete(self, request: ChatRequest, cancel: threading.Event) -> dict[str, Any]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        if request.stream:
            raise RequestError(400, "stream=true is not supported by rewardhub serve; send stream=false")
        if request.n != 1:
            raise RequestError(400, f"n={request.n} is not supported by rewardhub serve; send n=1")
        max_new = request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_TOKENS
        if max_new < 1:
            raise RequestError(400, f"max_tokens must be >= 1, got {max_new}")
        text = self.render(request.messages)
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        temperature = 1.0 if request.temperature is None else request.temperature
        sampling = {"do_sample": True, "temperature": temperature, "top_p": request.top_p or 1.0} \
            if temperature > 0 else {"do_sample": False}
        with self.holding(cancel):
            if request.seed is not None:
                torch.manual_seed(request.seed)
            try:
                device = next(self.model.parameters()).device
                with torch.no_grad():
                    out = self.model.generate(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                                              max_new_tokens=max_new, pad_token_id=self.tokenizer.pad_token_id,
                                              eos_token_id=self.tokenizer.eos_token_id,
                                              stopping_criteria=StoppingCriteriaList([Cancelled()]), **sampling)
            except Exception as exc:
                # a 500 the client should not retry: the same request would fail the same way
                raise RequestError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error") from exc
        if cancel.is_set():
            self.cancelled += 1
            raise RequestError(499, "the client closed the request; generation stopped")
        new = out[0, ids.shape[1]:].tolist()
        eos = self.tokenizer.eos_token_id
        finish = "length"
        if eos in new:
            new, finish = new[:new.index(eos) + 1], "stop"
        reply = self.tokenizer.decode(new, skip_special_tokens=True)
        reply, stopped = _cut_at_stop(reply, request.stop)
        return _completion(self.name, reply, "stop" if stopped else finish, ids.shape[1], len(new))


def create_app(local: LocalModel, api_key: str | None = None, weight_updates: bool = True):
    """The FastAPI app serving ``local`` under the OpenAI paths; with ``api_key``, requests need that bearer token.

    ``weight_updates=False`` refuses the adapter and weight routes (:mod:`rewardhub_judge.completions`).
    """
    from rewardhub_judge.completions import mount_completions

    app = FastAPI(title="rewardhub serve", description=f"OpenAI-compatible API for {local.name}")
    app.state.local = local
    weights = mount_completions(app, local, weight_updates)

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key and request.url.path.startswith(("/v1", "/update_weights")) and \
                request.headers.get("authorization") != f"Bearer {api_key}":
            return _error(401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error")
        return await call_next(request)

    @app.get("/health")
    def health():
        return {"status": "ok", "model": local.name, "requests": local.requests, "in_flight": local.in_flight,
                "cancelled": local.cancelled, "adapters": sorted(local.adapters), "weight_version": weights.version,
                "logprobs": "rewardhub"}  # the sampled tokens' log-probs follow rewardhub's convention

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "rewardhub"}
                                           for name in [local.name, *local.adapters]]}

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest, raw: Request):
        if request.model != local.name:
            return _error(404, f"The model {request.model!r} does not exist; this server serves {local.name!r}",
                          code="model_not_found")
        try:
            return JSONResponse(await unless_disconnected(raw, local.complete, request))
        except RequestError as exc:
            return _error(exc.status, exc.message, exc.kind, retry=exc.retry)

    return app


def load_local_model(path: str, name: str | None = None, dtype: str = "auto", device: str | None = None) -> LocalModel:
    """Load a causal LM and tokenizer with ``from_pretrained`` (rewardhub's loaders) for serving."""
    import torch

    from rewardhub.models import load_model, load_tokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(path)
    model = load_model(path, dtype=dtype, device=device, tokenizer=tokenizer)
    model.eval().requires_grad_(False)
    return LocalModel(model, tokenizer, name or path)


class ServerThread(AppThread):
    """An OpenAI-compatible app on a daemon thread; ``url`` is its ``/v1`` base URL."""

    base_path = "/v1"


async def unless_disconnected(raw: Request, fn, *args):
    """``fn(*args, cancel)`` on a worker thread; ``cancel`` (a :class:`threading.Event`) is set if the client
    disconnects first, so ``fn`` can stop waiting for the model or stop generating. ``fn``'s result, or its
    exception (it raises one when it stopped early)."""
    cancel = threading.Event()
    work = asyncio.ensure_future(run_in_threadpool(fn, *args, cancel))  # generation holds the lock
    gone = asyncio.ensure_future(_disconnected(raw))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work.done():
            cancel.set()  # the client went away (or the server is stopping): stop the generation
        gone.cancel()
    return await work


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (the body has been read, so the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _text(content: str | list[dict[str, Any]] | None) -> str:
    """OpenAI content: a string, or a list of parts of which the ``text`` ones are kept."""
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(str(part.get("text", "")) for part in content if part.get("type", "text") == "text")


def _cut_at_stop(text: str, stop: str | list[str] | None) -> tuple[str, bool]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    cuts = [text.find(s) for s in stops if s and s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


def _completion(model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason,
                     "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
           retry: bool = False) -> JSONResponse:
    """An OpenAI-style error body; ``x-should-retry`` tells OpenAI clients whether retrying can help."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                        status_code=status, headers={"x-should-retry": "true" if retry else "false"})
