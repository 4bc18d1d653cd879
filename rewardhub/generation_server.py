"""RL rollouts sampled on an inference server (vLLM, SGLang, ``rewardhub serve``), and the weights sent to it.

:class:`ServerBackend` is a :class:`~rewardhub.generation.GenerationBackend` whose ``generate`` posts the
prompts' token ids to an OpenAI-compatible ``/v1/completions`` endpoint: one request per distinct prompt
with ``n`` = its number of repeats (GRPO's group, so the server prefills each prompt once), sent
concurrently, and builds the :class:`~rewardhub.generation.Rollout` exactly as
:class:`~rewardhub.generation.TorchBackend` does (left-padded prompts, masks up to and including the first
EOS, pad after it). A trainer no longer has to hold the sampler, and the sampler can be a server built for
throughput.

The request asks for what RL needs, in vLLM's names: ``return_token_ids`` (the completion's ids in
``choices[i].token_ids``, vLLM >= 0.10.2), ``return_tokens_as_token_ids`` with ``logprobs`` (each sampled
token as ``"token_id:N"`` in ``logprobs.tokens`` and its log-prob in ``logprobs.token_logprobs``; older vLLM),
``stop_token_ids`` (every EOS id), ``seed`` (drawn from the run's generator, so a resumed run sends the same
requests) and ``top_k`` (only when on). Either id field is read; a server returning neither is refused with
an error that says so.

Log-probs. RL needs ``log_softmax(logits / temperature)`` at the sampled token, before top-k/top-p
(:mod:`rewardhub.generation`). vLLM's default ``--logprobs-mode raw_logprobs`` reports the log-prob at
temperature 1; ``processed_logprobs`` after temperature *and* top-k/top-p. So vLLM's match ours only at
temperature 1 without top-k/top-p (raw) or without top-k/top-p (processed). ``logprobs="auto"`` therefore
uses the server's log-probs only when the server is ``rewardhub serve`` (its ``/health`` says
``"logprobs": "rewardhub"``; it samples with our own backend) and otherwise has the trainer recompute them
with a forward pass (:func:`sampler_logprobs_usable`); the RL metrics say which
(``generation/logprobs_recomputed``, and ``generation/logprob_abs_diff_max`` between server and trainer when
both exist). A token whose log-prob the server did not return is NaN in the rollout, which forces the
recomputation too.

Weights (:meth:`ServerBackend.sync_weights`, called by the RL loop after every update):

* LoRA policy (``sync="lora"``, or ``"auto"`` with a peft model): the adapter is saved to
  ``sync_dir/lora-vN`` and registered with ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` (vLLM;
  SGLang's ``/load_lora_adapter`` is tried on a 404) under the versioned name ``rewardhub-lora-vN``; the
  previous version is unloaded, and requests then name the adapter as ``model``. The server must read
  ``sync_dir`` (same machine or a shared filesystem). vLLM needs ``--enable-lora --max-lora-rank R`` and
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``.
* Full weights (``sync="full"``, or ``"auto"`` without peft): without ``sync_dir``, the state dict as
  safetensors bytes in the body of ``POST /v1/update_weights`` (``rewardhub serve``; no shared filesystem
  needed, one copy of the weights over HTTP per step); with ``sync_dir``, ``save_pretrained`` into
  ``sync_dir/full-vN`` and ``POST /update_weights_from_disk {"model_path", "weight_version"}``, SGLang's
  endpoint (``rewardhub serve`` has it too). vLLM's HTTP server has no full-weight update (TRL's ``trl
  vllm-serve`` pushes tensors over NCCL, which this backend does not speak): with vLLM, train LoRA.

Plain ``urllib`` (no third-party HTTP client): the retries (429, 5xx, refused connections; exponential
backoff) and the messages are this module's own, whatever client library version is installed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from rewardhub.errors import GenerationServerError
from rewardhub.generation import (
    Rollout,
    SamplingParams,
    _check_special_ids,
    _eos_list,
    _left_pad,
    _model_device,
)

__all__ = ["ServerBackend", "backend_for", "build_rollout", "logprob_metrics", "parse_choice",
           "sampler_logprobs_usable", "state_dict_bytes"]

SYNC_MODES = ("auto", "lora", "full", "none")
LOGPROB_SOURCES = ("auto", "server", "recompute")
TOKEN_ID_PREFIX = "token_id:"
#: HTTP statuses worth retrying: rate limited, or the server (or a proxy in front of it) briefly failing.
RETRY_STATUSES = (408, 429, 500, 502, 503, 504)
ADAPTER_PREFIX = "rewardhub-lora-v"


def split_url(url: str) -> tuple[str, str]:
    """``(api_base, root)`` of a server URL given with or without ``/v1`` (``http://h:p/v1``, ``http://h:p``)."""
    text = str(url).strip().rstrip("/")
    if not text.startswith(("http://", "https://")):
        raise GenerationServerError(f"generation server URL {url!r} must start with http:// or https:// "
                                    "(e.g. http://127.0.0.1:8000/v1)")
    root = text[: -len("/v1")] if text.endswith("/v1") else text
    return root + "/v1", root


class ServerBackend:
    """Rollouts from an OpenAI-compatible ``/v1/completions`` server; see the module docstring.

    Args:
        url: the server, with or without ``/v1`` (``http://127.0.0.1:8000/v1``).
        model: the served model name to request; None: the first one ``/v1/models`` lists.
        api_key: sent as ``Authorization: Bearer KEY``; None: no header.
        timeout: seconds one HTTP request may take (a whole group of completions).
        concurrency: requests in flight at once (one per distinct prompt).
        retries: further attempts after a 429/5xx answer or a refused connection.
        sync: how :meth:`sync_weights` sends weights: auto (lora for a peft model, else full), lora, full, none.
        sync_dir: a directory the server can read: LoRA adapters go there (default ``work_dir``), and when it
            is given, full weights too (SGLang's ``/update_weights_from_disk``) instead of in a request body.
        work_dir: where adapters go when ``sync_dir`` is None (the run's ``OUT/weight_sync``).
        logprobs: auto (the server's own when it is ``rewardhub serve``, else recomputed), server, recompute.
    """

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, *, timeout: float = 600.0,
                 concurrency: int = 16, retries: int = 3, sync: str = "auto", sync_dir: str | Path | None = None,
                 work_dir: str | Path = "weight_sync", logprobs: str = "auto"):
        problems = []
        if sync not in SYNC_MODES:
            problems.append(f"sync must be one of {', '.join(SYNC_MODES)}, got {sync!r}")
        if logprobs not in LOGPROB_SOURCES:
            problems.append(f"logprobs must be one of {', '.join(LOGPROB_SOURCES)}, got {logprobs!r}")
        if not timeout > 0 or concurrency < 1 or retries < 0:
            problems.append(f"timeout must be > 0, concurrency >= 1 and retries >= 0; got {timeout}, {concurrency}, "
                            f"{retries}")
        if problems:
            raise ValueError("invalid ServerBackend: " + "; ".join(problems))
        self.api_base, self.root = split_url(url)
        self.model, self.api_key = model, api_key
        self.timeout, self.concurrency, self.retries = float(timeout), int(concurrency), int(retries)
        self.sync, self.logprobs = sync, logprobs
        self.sync_dir = Path(sync_dir) if sync_dir is not None else None
        self.work_dir = Path(work_dir)
        self.version: int | None = None  # the weights version the server holds (None: never synced)
        self.adapter: str | None = None  # the LoRA adapter requests name, once one is loaded
        self._adapter_dir: Path | None = None
        self._full_dir: Path | None = None
        self._health: dict[str, Any] | None = None

    # ---------------------------------------------------------------------------------------------- HTTP

    def _call(self, method: str, url: str, *, body: Any = None, data: bytes | None = None,
              headers: dict[str, str] | None = None, what: str = "request") -> tuple[int, bytes]:
        """One HTTP exchange with retries; returns ``(status, body)`` for any status that is not retried.

        Raises GenerationServerError when the server cannot be reached after the retries.
        """
        head = {"Accept": "application/json", **(headers or {})}
        if self.api_key:
            head["Authorization"] = f"Bearer {self.api_key}"
        if body is not None:
            data = json.dumps(body).encode()
            head["Content-Type"] = "application/json"
        delay, last = 0.5, ""
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(url, data=data, headers=head, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    return resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                payload = exc.read()
                if exc.code not in RETRY_STATUSES or _no_retry(exc.headers) or attempt == self.retries:
                    return exc.code, payload
                last = f"HTTP {exc.code}: {_message(payload)}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
                if attempt == self.retries:
                    raise GenerationServerError(
                        f"cannot reach the generation server at {url} ({what}): {last}. Start it (`rewardhub serve "
                        "--model M --port P`, `vllm serve M`, ...) or fix --generation-server") from exc
            time.sleep(delay)
            delay *= 2
        raise GenerationServerError(f"the generation server at {url} kept failing ({what}): {last}")

    def _json(self, method: str, url: str, body: Any = None, what: str = "request", **kw) -> tuple[int, Any]:
        status, raw = self._call(method, url, body=body, what=what, **kw)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def health(self) -> dict[str, Any]:
        """The server's ``GET /health`` JSON, once ({} when it has none or answers something else)."""
        if self._health is None:
            status, info = self._json("GET", self.root + "/health", what="health check")
            self._health = info if status == 200 and isinstance(info, dict) else {}
        return self._health

    def served_model(self) -> str:
        """The model name requests send: the adapter once one is loaded, else ``model`` or the server's first."""
        if self.adapter is not None:
            return self.adapter
        if self.model is None:
            status, listing = self._json("GET", self.api_base + "/models", what="listing models")
            ids = [m.get("id") for m in (listing or {}).get("data", [])] if isinstance(listing, dict) else []
            if status != 200 or not ids:
                raise GenerationServerError(f"{self.api_base}/models answered HTTP {status} "
                                            f"({_message(listing)}); set --generation-model to the served name")
            self.model = str(ids[0])
        return self.model

    @property
    def logprobs_trusted(self) -> bool:
        """Whether the server's log-probs follow rewardhub's convention (else the trainer recomputes them)."""
        if self.logprobs != "auto":
            return self.logprobs == "server"
        return self.health().get("logprobs") == "rewardhub"

    # ---------------------------------------------------------------------------------------- generation

    def generate(self, model: Any, prompt_ids: list[list[int]], params: SamplingParams, *,
                 eos_token_id: int | list[int], pad_token_id: int,
                 generator: torch.Generator | None = None) -> Rollout:
        """Sample one completion per prompt on the server; see :meth:`GenerationBackend.generate`.

        ``model`` only gives the device of the returned tensors (None: the CPU). Rows that repeat a prompt are
        sampled in one request with ``n`` = the number of repeats; the seeds come from ``generator`` (same
        state, same requests).
        """
        eos_ids = _eos_list(eos_token_id)
        pad = _check_special_ids(eos_ids, pad_token_id)
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        if len(prompt_ids) == 0 or min(len(p) for p in prompt_ids) == 0:
            raise ValueError("prompt_ids must hold at least one prompt, each of at least one token")
        groups: dict[tuple[int, ...], list[int]] = {}
        for row, prompt in enumerate(prompt_ids):
            groups.setdefault(tuple(int(t) for t in prompt), []).append(row)
        seeds: list[int | None] = [None] * len(groups)
        if generator is not None:
            drawn = torch.randint(0, 2**31 - 1, (len(groups),), generator=generator, device=generator.device)
            seeds = [int(s) for s in drawn.tolist()]
        name = self.served_model()
        bodies = [self._body(name, list(prompt), len(rows), params, eos_ids, seed)
                  for (prompt, rows), seed in zip(groups.items(), seeds)]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(bodies))) as pool:
            answers = list(pool.map(self._complete, bodies))
        completions: list[tuple[list[int], list[float]]] = [([], [])] * len(prompt_ids)
        for rows, choices in zip(groups.values(), answers):
            for row, choice in zip(rows, choices):
                completions[row] = parse_choice(choice, eos_ids, params.max_new_tokens, self.api_base)
        device = _model_device(model) if model is not None else torch.device("cpu")
        return build_rollout(prompt_ids, completions, pad, eos_ids, device)

    def _body(self, model: str, prompt: list[int], n: int, params: SamplingParams, eos_ids: list[int],
              seed: int | None) -> dict[str, Any]:
        body = {"model": model, "prompt": prompt, "n": n, "max_tokens": params.max_new_tokens,
                "temperature": float(params.temperature), "top_p": float(params.top_p), "logprobs": 1,
                "stop_token_ids": eos_ids, "return_token_ids": True, "return_tokens_as_token_ids": True,
                "skip_special_tokens": False, "stream": False}
        if params.top_k > 0:
            body["top_k"] = params.top_k  # sent only when on: vLLM before 0.10 took -1, not 0, for "off"
        if seed is not None:
            body["seed"] = seed
        return body

    def _complete(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        url = self.api_base + "/completions"
        status, answer = self._json("POST", url, body, what="sampling completions")
        if status != 200:
            raise GenerationServerError(_refusal(url, status, answer, body["model"]))
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list) or len(choices) != body["n"]:
            got = f"{len(choices)} choices" if isinstance(choices, list) else "no 'choices' list"
            raise GenerationServerError(f"{url} returned {got} for n={body['n']}; an OpenAI-compatible "
                                        "completions server returns n choices per prompt")
        return sorted(choices, key=lambda c: int(c.get("index", 0)))

    # --------------------------------------------------------------------------------------- weight sync

    def sync_weights(self, model: Any, version: int) -> None:
        """Make the server sample from ``model``'s weights, labelled ``version``; see the module docstring.

        A version the server already holds is not sent again. Raises GenerationServerError when the server
        refuses the weights or lacks the endpoint, saying what the server needs.
        """
        if self.sync == "none" or version == self.version:
            return
        is_lora = hasattr(model, "peft_config")
        mode = ("lora" if is_lora else "full") if self.sync == "auto" else self.sync
        if mode == "lora":
            if not is_lora:
                raise GenerationServerError("generation_sync=lora needs a LoRA policy (set lora_r > 0), or use "
                                            "generation_sync=full / auto")
            self._sync_lora(model, version)
        elif is_lora:
            raise GenerationServerError("generation_sync=full with a LoRA policy would send the base weights "
                                        "without the adapter; use generation_sync=lora (or auto)")
        elif self.sync_dir is not None:
            self._sync_full_from_disk(model, version)
        else:
            self._sync_full_bytes(model, version)
        self.version = version

    def _post_first(self, paths: Sequence[str], body: dict[str, Any], what: str) -> tuple[str, int, Any]:
        """POST to the first of ``paths`` the server has (a route it lacks moves on); ``(url, status, answer)``."""
        url, status, answer = "", 404, None
        for url in paths:
            status, answer = self._json("POST", url, body, what=what)
            if not _route_missing(status, answer):
                break
        return url, status, answer

    def _sync_lora(self, model: Any, version: int) -> None:
        directory = (self.sync_dir or self.work_dir).resolve() / f"lora-v{version}"
        if directory.exists():
            shutil.rmtree(directory)
        model.save_pretrained(str(directory))
        name = f"{ADAPTER_PREFIX}{version}"
        paths = [self.api_base + "/load_lora_adapter", self.root + "/load_lora_adapter"]  # vLLM, SGLang
        url, status, answer = self._post_first(paths, {"lora_name": name, "lora_path": str(directory)},
                                               "loading a LoRA adapter")
        if _route_missing(status, answer):
            raise GenerationServerError(
                f"the server at {self.root} has no /v1/load_lora_adapter: start vLLM with --enable-lora "
                "--max-lora-rank R and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (SGLang: --enable-lora), or use "
                "rewardhub serve")
        if status != 200:
            raise GenerationServerError(f"{url} refused adapter {name} from {directory} (HTTP {status}): "
                                        f"{_message(answer)}; the server must be able to read that directory "
                                        "(set --generation-sync-dir to a shared path)")
        previous, previous_dir = self.adapter, self._adapter_dir
        self.adapter, self._adapter_dir = name, directory
        if previous is not None:
            unload = [u.replace("load_lora_adapter", "unload_lora_adapter") for u in paths]
            self._post_first(unload, {"lora_name": previous}, "unloading the previous adapter")
        if previous_dir is not None and previous_dir != directory:
            shutil.rmtree(previous_dir, ignore_errors=True)

    def _sync_full_bytes(self, model: Any, version: int) -> None:
        url = self.api_base + "/update_weights"
        status, answer = self._call("POST", url, data=state_dict_bytes(model), what="sending the weights",
                                    headers={"Content-Type": "application/octet-stream",
                                             "X-Weight-Version": str(version)})
        if _route_missing(status, answer):
            raise GenerationServerError(
                f"the server at {self.root} has no /v1/update_weights (rewardhub serve has it): vLLM cannot take "
                "full weights over HTTP, so train a LoRA adapter there (--lora-r, vLLM with --enable-lora); for "
                "SGLang set --generation-sync-dir to a directory it reads (/update_weights_from_disk)")
        if status != 200:
            raise GenerationServerError(f"{url} refused the weights (HTTP {status}): {_message(answer)}")

    def _sync_full_from_disk(self, model: Any, version: int) -> None:
        directory = self.sync_dir.resolve() / f"full-v{version}"
        if directory.exists():
            shutil.rmtree(directory)
        model.save_pretrained(str(directory), safe_serialization=True)
        url = self.root + "/update_weights_from_disk"
        status, answer = self._json("POST", url, {"model_path": str(directory), "weight_version": str(version)},
                                    what="loading weights from disk")
        ok = status == 200 and (not isinstance(answer, dict) or answer.get("success", True))
        if not ok:
            hint = (" (the server has no such endpoint: SGLang and rewardhub serve have it, vLLM does not)"
                    if _route_missing(status, answer) else "; the server must be able to read that directory")
            raise GenerationServerError(f"{url} did not load {directory} (HTTP {status}): {_message(answer)}{hint}")
        if self._full_dir is not None and self._full_dir != directory:
            shutil.rmtree(self._full_dir, ignore_errors=True)
        self._full_dir = directory

    def close(self) -> None:
        """Delete the weight files this backend wrote (the server has loaded them)."""
        for directory in (self._adapter_dir, self._full_dir):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------------
# Responses -> Rollout
# ------------------------------------------------------------------------------------------------------------


def parse_choice(choice: dict[str, Any], eos_ids: Sequence[int], max_new_tokens: int,
                 url: str = "the server") -> tuple[list[int], list[float]]:
    """One completion choice's token ids and log-probs, cut after the first EOS; NaN for an unknown log-prob.

    Ids come from ``logprobs.tokens`` written as ``"token_id:N"`` (``return_tokens_as_token_ids``; aligned with
    the log-probs) or else ``token_ids`` (vLLM's ``return_token_ids``); log-probs from
    ``logprobs.token_logprobs``. A choice
    that stopped on EOS (``finish_reason`` "stop") without listing the EOS token gets it appended, with an
    unknown log-prob.
    """
    block = choice.get("logprobs") or {}
    ids = choice.get("token_ids")
    tokens = block.get("tokens") if isinstance(block, dict) else None
    as_ids = tokens is not None and all(isinstance(t, str) and t.startswith(TOKEN_ID_PREFIX) for t in tokens)
    if as_ids:  # aligned with token_logprobs by construction, so preferred to token_ids
        ids = [int(t[len(TOKEN_ID_PREFIX):]) for t in tokens]
    elif ids is None and tokens is not None:
        raise GenerationServerError(
            f"{url} returned tokens as text, not ids: it ignored return_tokens_as_token_ids and "
            "return_token_ids. Use vLLM (>= 0.10.2 returns token_ids) or rewardhub serve")
    if ids is None:
        raise GenerationServerError(
            f"{url} returned no token ids (neither choices[].token_ids nor logprobs.tokens as 'token_id:N'): "
            "RL trains on the exact sampled tokens; use vLLM (return_token_ids) or rewardhub serve")
    ids = [int(t) for t in ids]
    raw = block.get("token_logprobs") if isinstance(block, dict) else None
    if raw is None:
        lps = [math.nan] * len(ids)
    elif len(raw) != len(ids):
        raise GenerationServerError(f"{url} returned {len(raw)} log-probs for {len(ids)} tokens")
    else:
        lps = [math.nan if v is None else float(v) for v in raw]
    eos = set(int(e) for e in eos_ids)
    cut = next((k for k, t in enumerate(ids) if t in eos), None)
    if cut is not None:
        ids, lps = ids[: cut + 1], lps[: cut + 1]
    elif choice.get("finish_reason") == "stop" and len(ids) < max_new_tokens:
        stop = choice.get("stop_reason")
        ids, lps = [*ids, stop if isinstance(stop, int) and stop in eos else int(eos_ids[0])], [*lps, math.nan]
    ids, lps = ids[:max_new_tokens], lps[:max_new_tokens]
    if not ids:
        raise GenerationServerError(f"{url} returned an empty completion (finish_reason "
                                    f"{choice.get('finish_reason')!r}); every completion has at least one token")
    return ids, lps


def build_rollout(prompt_ids: Sequence[Sequence[int]], completions: Sequence[tuple[list[int], list[float]]],
                  pad_token_id: int, eos_ids: Sequence[int], device: torch.device | str = "cpu") -> Rollout:
    """The :class:`Rollout` of B prompts and their completions, laid out as :class:`TorchBackend` lays it out.

    Args:
        prompt_ids: B unpadded prompts.
        completions: B ``(ids, logprobs)``, each already cut after its first EOS (:func:`parse_choice`).
        pad_token_id: left padding of prompts and filler after each completion.
        eos_ids: the EOS ids (``eos_reached`` = the completion ends with one).
        device: where the tensors go.

    Returns:
        A rollout with T = the longest completion; log-probs 0 where the mask is 0.
    """
    if len(prompt_ids) != len(completions):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completions)} completions")
    ids, mask, _ = _left_pad(prompt_ids, pad_token_id, torch.device(device))
    width = max(len(c) for c, _ in completions)
    out_ids = [c + [pad_token_id] * (width - len(c)) for c, _ in completions]
    out_mask = [[1] * len(c) + [0] * (width - len(c)) for c, _ in completions]
    out_lp = [lp + [0.0] * (width - len(lp)) for _, lp in completions]
    eos = set(int(e) for e in eos_ids)
    reached = [bool(c) and c[-1] in eos for c, _ in completions]
    return Rollout(ids, mask, torch.tensor(out_ids, dtype=torch.long, device=device),
                   torch.tensor(out_mask, dtype=torch.long, device=device),
                   torch.tensor(out_lp, dtype=torch.float32, device=device),
                   torch.tensor(reached, dtype=torch.bool, device=device))


# ------------------------------------------------------------------------------------------------------------
# Weights as bytes, log-prob bookkeeping, the backend a config asks for
# ------------------------------------------------------------------------------------------------------------


def state_dict_bytes(model: Any) -> bytes:
    """``model``'s parameters and buffers as safetensors bytes, each storage once (tied weights share one)."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            continue  # a tied weight (lm_head = embed_tokens): loading the first one updates both
        seen.add(ptr)
        tensors[name] = tensor.detach().to("cpu").contiguous()
    return save(tensors)


def sampler_logprobs_usable(backend: Any, rollout: Rollout) -> bool:
    """Whether the rollout's log-probs can serve as the old log-probs: the backend vouches for their convention
    (``logprobs_trusted``, True when absent) and none is missing (NaN) on a completion token."""
    if not getattr(backend, "logprobs_trusted", True):
        return False
    return bool(torch.isfinite(rollout.logprobs[rollout.completion_mask.bool()]).all())


def logprob_metrics(rollout: Rollout, old_logprobs: torch.Tensor, recomputed: bool) -> dict[str, float]:
    """``generation/logprobs_recomputed`` (0/1) and, when the trainer recomputed log-probs the sampler also
    reported, ``generation/logprob_abs_diff_max`` over the completion tokens: how far sampler and trainer
    disagree for the same weights (a weight-sync bug or a log-prob convention mismatch shows up here)."""
    out = {"generation/logprobs_recomputed": float(recomputed)}
    if recomputed:
        known = rollout.completion_mask.bool() & torch.isfinite(rollout.logprobs)
        if bool(known.any()):
            diff = (rollout.logprobs.to(old_logprobs.device) - old_logprobs).abs()[known.to(old_logprobs.device)]
            out["generation/logprob_abs_diff_max"] = float(diff.max())
    return out


def backend_for(cfg: Any) -> Any:
    """The backend an RL config asks for: a :class:`ServerBackend` with ``generation_server``, else TorchBackend."""
    from rewardhub.generation import TorchBackend

    if not getattr(cfg, "generation_server", None):
        return TorchBackend()
    return ServerBackend(cfg.generation_server, cfg.generation_model,
                         cfg.generation_api_key or os.environ.get("OPENAI_API_KEY") or None,
                         timeout=cfg.generation_timeout, concurrency=cfg.generation_concurrency,
                         sync=cfg.generation_sync, sync_dir=cfg.generation_sync_dir,
                         work_dir=Path(cfg.out) / "weight_sync", logprobs=cfg.generation_logprobs)


def _route_missing(status: int, answer: Any) -> bool:
    """A 404 for the path itself (FastAPI's ``{"detail": "Not Found"}``), not for a model or adapter name."""
    return status == 404 and _message(answer).strip() in ("Not Found", "", "None", "404 page not found")


def _no_retry(headers: Any) -> bool:
    """An OpenAI-style ``x-should-retry: false`` (e.g. rewardhub serve's deterministic 500s)."""
    return str(headers.get("x-should-retry", "")).lower() == "false" if headers is not None else False


def _message(answer: Any) -> str:
    """The human part of an error body: OpenAI's ``error.message``, vLLM's ``message``/``detail``, or the text."""
    if isinstance(answer, bytes):
        try:
            answer = json.loads(answer)
        except ValueError:
            answer = answer.decode(errors="replace")
    if isinstance(answer, dict):
        err = answer.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        for key in ("message", "detail", "error"):
            if answer.get(key):
                return str(answer[key])
    return str(answer)[:500]


def _refusal(url: str, status: int, answer: Any, model: str) -> str:
    """The message for a refused completions request, with what to fix."""
    text = _message(answer)
    if status == 401:
        return f"{url} refused the API key (HTTP 401: {text}); set --generation-api-key or $OPENAI_API_KEY"
    if status == 404 and ("model" in text.lower() or "does not exist" in text):
        return (f"{url} does not serve model {model!r} (HTTP 404: {text}); set --generation-model to a name "
                f"GET {url.rsplit('/', 1)[0]}/models lists")
    if status == 404:
        return f"{url} does not exist (HTTP 404): the server has no OpenAI /v1/completions endpoint"
    return f"{url} refused the completions request (HTTP {status}): {text}"
