"""``rewardhub serve``'s rollout endpoints: token-id completions with log-probs, and weight updates.

What an RL trainer needs from a sampling server, under the names vLLM and SGLang use, so
:class:`rewardhub.generation_server.ServerBackend` talks to this server and to theirs alike:

* ``POST /v1/completions``: prompts as token ids (or text), ``n``, ``max_tokens``, ``temperature``,
  ``top_p``, ``top_k``, ``seed``, ``stop_token_ids`` (plus the tokenizer's EOS unless ``ignore_eos``),
  ``logprobs``; each choice carries ``token_ids`` (vLLM's ``return_token_ids``) and, with ``logprobs``,
  ``logprobs.tokens`` (``"token_id:N"`` with ``return_tokens_as_token_ids``) and ``token_logprobs``. The
  sampling is rewardhub's own :class:`~rewardhub.generation.TorchBackend`, so the log-probs follow the
  trainer's convention (``log_softmax(logits / temperature)`` before top-k/top-p, temperature 1 when
  greedy) and ``/health`` says so (``"logprobs": "rewardhub"``). ``top_logprobs`` holds the sampled token
  only (the alternatives are not computed); stop strings, ``echo`` and streaming are refused.
* ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` / ``POST /v1/unload_lora_adapter``
  ``{"lora_name"}`` (vLLM's): peft adapters on the served base model; a request names one as ``model``.
* ``POST /v1/update_weights``: full weights as safetensors bytes in the body (``X-Weight-Version`` header),
  and ``POST /update_weights_from_disk`` ``{"model_path", "weight_version"}`` (SGLang's): the safetensors
  files of a ``save_pretrained`` directory. Every tensor is checked (name, shape) before any is copied in.

A completions request whose client disconnects is dropped as a chat request is (never started if it is still
waiting for the model, stopped at the next token if it is generating; counted in ``/health``'s ``cancelled``).
One lock serialises sampling, chat and weight updates (the chat endpoint always samples from the base
weights as updated, without adapters). Weight updates can be switched off (``--no-weight-updates``); like
vLLM's runtime LoRA loading they read server-side paths, so keep the server on loopback or behind
``--api-key``.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from rewardhub.generation import GenerationStopped
from rewardhub_judge.server import RequestError, unless_disconnected

#: rows (prompts x n) one completions request may ask for: a bound on the memory one request takes
MAX_ROWS = 4096


class CompletionRequest(BaseModel):
    """The fields of an OpenAI (vLLM-extended) completions request this server honours; others are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    prompt: list[int] | list[list[int]] | str | list[str]
    n: int = 1
    max_tokens: int | None = 16
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    logprobs: int | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    return_token_ids: bool = False
    return_tokens_as_token_ids: bool = False
    stream: bool = False
    echo: bool = False
    stop: str | list[str] | None = None


class LoadAdapter(BaseModel):
    lora_name: str
    lora_path: str


class UnloadAdapter(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lora_name: str


class FromDisk(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model_path: str
    weight_version: str | None = None


class Refused(Exception):
    """A request this server refuses: HTTP ``status`` with an OpenAI-style error body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Weights:
    """The served model's tensors by name, adapters loaded on it, and the version of the weights.

    The tensors are captured before any adapter is injected (peft renames the wrapped layers), so a full
    update finds them under the names ``save_pretrained`` and ``state_dict`` use.
    """

    def __init__(self, local):
        self.local = local
        self.tensors = dict(local.model.state_dict(keep_vars=True))
        self.peft = None  # the PeftModel wrapping local.model once an adapter is loaded
        self.version: str | None = None

    def load_adapter(self, name: str, path: str) -> None:
        if name == self.local.name or name in self.local.adapters:
            raise Refused(400, f"The lora adapter {name!r} has already been loaded (or names the base model); "
                          "unload it first or pick another name")
        if not (Path(path) / "adapter_config.json").is_file():
            raise Refused(400, f"lora_path {path!r} holds no adapter_config.json; give a directory written by a "
                          "peft model's save_pretrained")
        try:
            if self.peft is None:
                from peft import PeftModel

                self.peft = PeftModel.from_pretrained(self.local.model, path, adapter_name=name)
            else:
                self.peft.load_adapter(path, adapter_name=name)
        except Exception as exc:  # a wrong base (shapes), a corrupt file: the client should see why
            raise Refused(400, f"cannot load adapter {name!r} from {path!r} onto {self.local.name!r}: "
                          f"{type(exc).__name__}: {exc}") from exc
        self.peft.eval()
        self.peft.base_model.disable_adapter_layers()  # the base model stays the default
        self.local.adapters[name] = path

    def unload_adapter(self, name: str) -> None:
        if name not in self.local.adapters:
            raise Refused(404, f"The lora adapter {name!r} cannot be found; loaded: {sorted(self.local.adapters)}")
        try:
            self.peft.delete_adapter(name)
        except Exception as exc:
            raise Refused(400, f"cannot unload adapter {name!r}: {type(exc).__name__}: {exc}") from exc
        del self.local.adapters[name]
        self.peft.base_model.disable_adapter_layers()

    @contextmanager
    def serving(self, name: str):
        """The model to sample from for the request's ``model``: the base, or the base with adapter ``name``."""
        if name == self.local.name:
            yield self.local.model
            return
        if name not in self.local.adapters:
            served = [self.local.name, *self.local.adapters]
            raise Refused(404, f"The model {name!r} does not exist; this server serves {served}")
        self.peft.set_adapter(name)
        self.peft.base_model.enable_adapter_layers()
        try:
            yield self.peft
        finally:
            self.peft.base_model.disable_adapter_layers()

    def update(self, state: dict[str, Any], version: str | None) -> int:
        """Copy ``state`` into the served tensors (every name and shape checked first); how many were copied."""
        import torch

        unknown = [k for k in state if k not in self.tensors]
        if unknown:
            raise Refused(400, f"{len(unknown)} tensor name(s) the served model does not have, e.g. {unknown[:3]}; "
                          "send the state dict of the same architecture")
        wrong = [f"{k}: {tuple(v.shape)} != {tuple(self.tensors[k].shape)}" for k, v in state.items()
                 if tuple(v.shape) != tuple(self.tensors[k].shape)]
        if wrong:
            raise Refused(400, f"tensor shapes differ from the served model's: {wrong[:3]}")
        if not state:
            raise Refused(400, "no tensors in the update")
        with torch.no_grad():
            for name, value in state.items():
                target = self.tensors[name]
                target.copy_(value.to(device=target.device, dtype=target.dtype))
        self.version = version
        return len(state)


def mount_completions(app: FastAPI, local, weight_updates: bool = True) -> Weights:
    """Add the completion and weight routes to ``app`` (serving ``local``); the :class:`Weights` they use."""
    weights = Weights(local)
    app.state.weights = weights

    def locked(fn, *args):
        with local.lock:
            local.requests += 1
            return fn(*args)

    def sample(request: CompletionRequest, cancel: threading.Event):
        """``complete`` once the model is free, unless the client has gone by then or goes while it runs."""
        local.in_flight += 1
        try:
            with local.holding(cancel):
                return complete(weights, request, cancel.is_set)
        except RequestError as exc:  # gone before it started
            raise Refused(exc.status, exc.message) from exc
        except GenerationStopped as exc:
            local.cancelled += 1
            raise Refused(499, f"the client closed the request; generation {exc}") from exc
        finally:
            local.in_flight -= 1

    async def answer(fn, *args, plain: str | None = None):
        try:
            result = await run_in_threadpool(locked, fn, *args)
        except Refused as exc:
            return _refusal(exc.status, exc.message)
        return PlainTextResponse(plain) if plain is not None else JSONResponse(result)

    def allowed() -> JSONResponse | None:
        if weight_updates:
            return None
        return _refusal(403, "weight updates are switched off on this server (rewardhub serve --no-weight-updates)")

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest, raw: Request):
        try:
            return JSONResponse(await unless_disconnected(raw, sample, request))
        except Refused as exc:
            return _refusal(exc.status, exc.message)

    @app.post("/v1/load_lora_adapter")
    async def load_lora(request: LoadAdapter):
        return allowed() or await answer(weights.load_adapter, request.lora_name, request.lora_path,
                                         plain=f"Success: LoRA adapter '{request.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(request: UnloadAdapter):
        return allowed() or await answer(weights.unload_adapter, request.lora_name,
                                         plain=f"Success: LoRA adapter '{request.lora_name}' removed successfully.")

    @app.post("/v1/update_weights")
    async def update_weights(raw: Request):
        if (refused := allowed()) is not None:
            return refused
        body = await raw.body()
        return await answer(_from_bytes, weights, body, raw.headers.get("x-weight-version"))

    @app.post("/update_weights_from_disk")
    async def update_from_disk(request: FromDisk):
        if (refused := allowed()) is not None:
            return refused
        return await answer(_from_disk, weights, request.model_path, request.weight_version)

    return weights


def _from_bytes(weights: Weights, body: bytes, version: str | None) -> dict[str, Any]:
    from safetensors.torch import load

    try:
        state = load(body)
    except Exception as exc:
        raise Refused(400, f"the body is not safetensors bytes ({type(exc).__name__}: {exc}); send "
                      "safetensors.torch.save(state_dict)") from exc
    n = weights.update(state, version)
    return {"success": True, "message": f"updated {n} tensors", "weight_version": version}


def _from_disk(weights: Weights, path: str, version: str | None) -> dict[str, Any]:
    from safetensors.torch import load_file

    files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
    if not files:
        raise Refused(400, f"model_path {path!r} is not a directory with .safetensors files; give a directory "
                      "written by save_pretrained(safe_serialization=True) that this server can read")
    state: dict[str, Any] = {}
    for file in files:
        state.update(load_file(str(file)))
    n = weights.update(state, version)
    return {"success": True, "message": f"updated {n} tensors from {path}", "weight_version": version}


def complete(weights: Weights, request: CompletionRequest, should_stop=None) -> dict[str, Any]:
    """Sample the request's completions with rewardhub's TorchBackend; the OpenAI completions response body.

    ``should_stop`` is asked before every decoded token (the client's disconnect); see ``TorchBackend``."""
    import torch

    from rewardhub.generation import TorchBackend

    local = weights.local
    prompts = _prompts(local, request)
    params = _params(request, len(prompts))
    eos, pad = _stop_ids(local, request)
    with weights.serving(request.model) as model:
        device = next(model.parameters()).device
        generator = torch.Generator(device=device)
        generator.manual_seed(request.seed if request.seed is not None else random.SystemRandom().randrange(2**63))
        rows = [p for p in prompts for _ in range(request.n)]
        try:
            rollout = TorchBackend().generate(model, rows, params, eos_token_id=eos, pad_token_id=pad,
                                              generator=generator, should_stop=should_stop)
        except GenerationStopped:
            raise
        except Exception as exc:
            raise Refused(500, f"generation failed: {type(exc).__name__}: {exc}") from exc
    lengths = rollout.completion_lengths.tolist()
    ids, lps = rollout.completion_ids.tolist(), rollout.logprobs.tolist()
    reached = rollout.eos_reached.tolist()
    stops = set(request.stop_token_ids or [])
    choices = []
    for i, (row, lp, n, done) in enumerate(zip(ids, lps, lengths, reached)):
        tokens = row[:n]
        choice = {"index": i, "text": local.tokenizer.decode(tokens[:-1] if done else tokens, skip_special_tokens=True),
                  "finish_reason": "stop" if done else "length",
                  "stop_reason": tokens[-1] if done and tokens[-1] in stops else None, "logprobs": None}
        if request.return_token_ids:
            choice["token_ids"] = tokens
        if request.logprobs is not None:
            choice["logprobs"] = _logprobs_block(local.tokenizer, tokens, lp[:n], request.return_tokens_as_token_ids)
        choices.append(choice)
    n_prompt = sum(len(p) for p in prompts) * request.n
    n_out = sum(lengths)
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": request.model, "choices": choices,
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}}


def _prompts(local, request: CompletionRequest) -> list[list[int]]:
    """The request's prompts as token-id lists (text is tokenized as vLLM does, special tokens added)."""
    raw = request.prompt
    if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], str)):
        texts = [raw] if isinstance(raw, str) else raw
        prompts = [local.tokenizer(t)["input_ids"] for t in texts]
    elif isinstance(raw, list) and raw and isinstance(raw[0], int):
        prompts = [list(raw)]
    else:
        prompts = [list(p) for p in raw]
    if not prompts or any(len(p) == 0 for p in prompts):
        raise Refused(400, "prompt is empty: give token ids ([1, 2, 3]), a list of them, or text")
    vocab = local.model.get_input_embeddings().weight.shape[0]
    bad = sorted({t for p in prompts for t in p if not 0 <= t < vocab})
    if bad:
        raise Refused(400, f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
    return prompts


def _params(request: CompletionRequest, n_prompts: int):
    """The request's SamplingParams; 400 for what this server does not do or values out of range."""
    from rewardhub.generation import SamplingParams

    if request.stream or request.echo:
        raise Refused(400, "stream and echo are not supported by rewardhub serve's /v1/completions; send them false")
    if request.stop:
        raise Refused(400, "stop strings are not supported by rewardhub serve's /v1/completions; use stop_token_ids")
    if request.n < 1 or request.n * n_prompts > MAX_ROWS:
        raise Refused(400, f"n must be >= 1 and n x prompts <= {MAX_ROWS}, got n={request.n} for {n_prompts} prompts")
    top_k = request.top_k if request.top_k is not None and request.top_k > 0 else 0  # vLLM: 0 or -1 = off
    try:
        return SamplingParams(max_new_tokens=request.max_tokens if request.max_tokens is not None else 16,
                              temperature=1.0 if request.temperature is None else request.temperature,
                              top_p=1.0 if request.top_p is None else request.top_p, top_k=top_k)
    except ValueError as exc:
        raise Refused(400, str(exc)) from exc


def _stop_ids(local, request: CompletionRequest) -> tuple[list[int], int]:
    """EOS ids (the request's ``stop_token_ids``, plus the tokenizer's EOS unless ``ignore_eos``) and the pad id."""
    tok = local.tokenizer
    pad = tok.pad_token_id
    eos = list(dict.fromkeys([*(request.stop_token_ids or []),
                              *([] if request.ignore_eos or tok.eos_token_id is None else [tok.eos_token_id])]))
    if not eos:
        raise Refused(400, "ignore_eos without stop_token_ids leaves no token to stop at; give stop_token_ids")
    if pad is None or pad in eos:
        raise Refused(400, f"stop_token_ids {eos} include the pad token ({pad}) of the served tokenizer; the pad "
                      "token cannot end a completion")
    return eos, pad


def _logprobs_block(tokenizer, tokens: list[int], lps: list[float], as_ids: bool) -> dict[str, Any]:
    """OpenAI completions ``logprobs``: tokens, their log-probs, the sampled token as top-1, text offsets."""
    names = [f"token_id:{t}" for t in tokens] if as_ids else tokenizer.convert_ids_to_tokens(tokens)
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(tokenizer.decode([t], skip_special_tokens=True))
    return {"tokens": names, "token_logprobs": lps, "top_logprobs": [{n: lp} for n, lp in zip(names, lps)],
            "text_offset": offsets}


def _refusal(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error" if status < 500 else
                                   "server_error", "param": None, "code": None}}, status_code=status,
                        headers={"x-should-retry": "false"})
