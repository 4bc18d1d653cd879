"""Batched sampling for RL rollouts (PPO / GRPO / RLOO), behind a small swappable backend interface.

The training loops never call ``model.generate``; they call a :class:`GenerationBackend`, which returns a
:class:`Rollout`: left-padded prompts, the sampled completions, explicit masks, and the log-prob of every
sampled token. Keeping the masks explicit (instead of deriving them from ``ids != pad``) and requiring a
pad token distinct from EOS removes the classic PPO bug where the EOS token is masked out of the loss, so
the policy never learns to stop.

The default :class:`TorchBackend` is a lean decode loop over the Hugging Face KV cache. Compared to
``model.generate`` it skips the logits-processor / stopping-criteria machinery, prefills each distinct
prompt once (GRPO samples a group of completions per prompt), computes prefill logits for the last
position only, and drops finished rows from the batch and the cache so the long tail of a rollout does not
pay for sequences that already stopped. Another backend (vLLM, a server) only has to implement
:meth:`GenerationBackend.generate`; one whose weights live elsewhere also implements ``sync_weights`` (see
:class:`GenerationBackend`), which the RL loop calls after every update
(:class:`rewardhub.generation_server.ServerBackend` samples on an OpenAI-compatible server).

Log-prob convention (shared with :func:`rewardhub.logprobs.sequence_logprobs`, which RL uses for old/reference
log-probs): ``log_softmax(logits / temperature)`` at the sampled token, with temperature 1 for greedy decoding, taken
*before* top-k / top-p filtering, so it is the log-prob under the same distribution a fresh forward pass
computes.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from rewardhub.logprobs import accepts_logits_to_keep, position_ids_of

try:
    from transformers.cache_utils import DynamicLayer
except ImportError:  # pragma: no cover - older transformers without per-layer caches: no preallocation
    DynamicLayer = None

__all__ = [
    "GenerationBackend",
    "Rollout",
    "SamplingParams",
    "TorchBackend",
    "WeightSyncing",
    "generate_text",
    "sync_backend_weights",
]


# --------------------------------------------------------------------------------------------------------
# Parameters and result
# --------------------------------------------------------------------------------------------------------


@dataclass
class SamplingParams:
    """How to sample completions.

    Attributes:
        max_new_tokens: upper bound on the completion length T (>= 1).
        temperature: logits are divided by it before sampling; 0 means greedy (argmax).
        top_p: nucleus sampling: keep the smallest set of most likely tokens whose probability mass is at
            least ``top_p`` (after top-k); 1.0 disables it. Must be in (0, 1].
        top_k: keep only the ``top_k`` most likely tokens; 0 disables it.
    """

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            problems.append(f"max_new_tokens must be an int, got {self.max_new_tokens!r}")
        elif self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature):
            problems.append(
                f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}"
            )
        elif self.temperature < 0:
            problems.append(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not isinstance(self.top_p, (int, float)) or not (0.0 < self.top_p <= 1.0):
            problems.append(f"top_p must be in (0, 1] (1 disables nucleus filtering), got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            problems.append(f"top_k must be an int (0 disables it), got {self.top_k!r}")
        elif self.top_k < 0:
            problems.append(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if problems:
            raise ValueError("invalid SamplingParams: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        """True when decoding is deterministic argmax (temperature 0)."""
        return self.temperature == 0

    @property
    def logprob_temperature(self) -> float:
        """Temperature under which log-probs are reported: the sampling temperature, or 1 when greedy."""
        return 1.0 if self.greedy else float(self.temperature)


@dataclass
class Rollout:
    """A batch of sampled completions, ready for reward scoring and a policy-gradient update.

    All tensors live on the model's device. B = batch size, P = padded prompt length, T = completion length
    (the number of decode steps actually run: ``max_new_tokens`` or fewer if every row stopped early).

    Attributes:
        prompt_ids: (B, P) prompts, LEFT-padded with ``pad_token_id``.
        prompt_mask: (B, P) 1 for real prompt tokens, 0 for padding.
        completion_ids: (B, T) sampled tokens; everything after the first EOS is ``pad_token_id``.
        completion_mask: (B, T) 1 for generated tokens up to AND including the first EOS, 0 after.
        logprobs: (B, T) float32 log-prob of each sampled token under ``log_softmax(logits / temperature)``
            (temperature 1 when greedy), before top-k/top-p filtering; 0 where the mask is 0.
        eos_reached: (B,) whether the row emitted EOS within ``max_new_tokens``.
    """

    prompt_ids: torch.LongTensor
    prompt_mask: torch.LongTensor
    completion_ids: torch.LongTensor
    completion_mask: torch.LongTensor
    logprobs: torch.FloatTensor
    eos_reached: torch.BoolTensor

    @property
    def input_ids(self) -> torch.LongTensor:
        """(B, P + T) prompt and completion, the input of the training forward pass."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.LongTensor:
        """(B, P + T) 1 for real tokens (prompt and completion up to and including EOS)."""
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    @property
    def position_ids(self) -> torch.LongTensor:
        """(B, P + T) positions consistent with left padding: ``cumsum(attention_mask) - 1``, clamped at 0."""
        return position_ids_of(self.attention_mask)

    @property
    def completion_lengths(self) -> torch.LongTensor:
        """(B,) number of generated tokens per row, EOS included."""
        return self.completion_mask.sum(dim=1)

    @property
    def prompt_length(self) -> int:
        """P, the padded prompt width: completions start at this column of :attr:`input_ids`."""
        return self.prompt_ids.shape[1]

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]


@runtime_checkable
class GenerationBackend(Protocol):
    """Anything that turns token prompts into a :class:`Rollout` (our torch loop, vLLM, a server...).

    Optional: a backend that holds its own copy of the weights (a server) also implements
    :meth:`WeightSyncing.sync_weights`; callers look it up with ``getattr`` (it is not part of this
    protocol, so ``isinstance`` checks do not require it). :class:`TorchBackend` does not implement it: it
    samples from whatever ``model`` it is given.
    """

    def generate(
        self,
        model: Any,
        prompt_ids: list[list[int]],
        params: SamplingParams,
        *,
        eos_token_id: int | list[int],
        pad_token_id: int,
        generator: torch.Generator | None = None,
    ) -> Rollout:
        """Sample one completion per prompt.

        Args:
            model: a causal LM called as ``model(input_ids=..., attention_mask=..., ...)``.
            prompt_ids: B prompts as token ids (unpadded, any lengths >= 1).
            params: sampling parameters.
            eos_token_id: one id or several; generation of a row stops at the first of them.
            pad_token_id: filler for left padding and after EOS; must differ from every EOS id.
            generator: RNG for sampling, for reproducibility (same seed, same samples).

        Returns:
            The :class:`Rollout` (on the model's device). A backend that cannot report a sampled token's
            log-prob puts NaN there; the RL loop then recomputes the old log-probs with a forward pass.
        """
        ...

    # Optional (not part of the runtime check, so a backend without it still is a GenerationBackend):
    #
    #     def sync_weights(self, model, version: int) -> None
    #
    # Make the weights the backend samples from equal to ``model``'s. The RL loop calls it on the main
    # process with ``version`` = the number of optimizer steps ``model`` has taken: ``version = step - 1``
    # before a run's first rollout (the starting or resumed weights) and ``version = step`` after each
    # step's update; the pipeline (--async-rollouts) calls it instead, on its staleness schedule. Versions only
    # grow; calling it twice with one version may skip the second push. In-process backends sample from
    # ``model`` itself and must NOT define it: having the method is how the pipeline tells a backend that holds
    # its own weights (it then keeps no weight copy) from one it must give a copy; :func:`sync_backend_weights`
    # calls it when a backend has it.


@runtime_checkable
class WeightSyncing(Protocol):
    """The optional method of a :class:`GenerationBackend` that samples from weights it holds itself."""

    def sync_weights(self, model: Any, version: int) -> None:
        """Make the backend sample from ``model``'s current weights from now on.

        Args:
            model: the trainer's policy (its ``state_dict`` / parameters are what to push).
            version: the weights version, the count of updates applied to them (0: the initial weights);
                the pipelined loop (:mod:`rewardhub.rollout_pipeline`) calls it between generations, never
                during one.
        """
        ...


# --------------------------------------------------------------------------------------------------------
# Small tensor helpers
# --------------------------------------------------------------------------------------------------------


def _eos_list(eos_token_id: int | Sequence[int] | None) -> list[int]:
    if eos_token_id is None:
        raise ValueError("eos_token_id is None: generation needs an EOS id to know when a completion ends")
    ids = [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(i) for i in eos_token_id]
    if not ids:
        raise ValueError("eos_token_id is an empty list: give at least one EOS id")
    return ids


def _check_special_ids(eos_ids: list[int], pad_token_id: int | None) -> int:
    """Pad must exist and differ from EOS: if they are equal, masks derived from ``ids != pad`` drop the EOS
    token from the loss and the policy never learns to stop (a known PPO pitfall)."""
    if pad_token_id is None:
        raise ValueError(
            "pad_token_id is None: set a pad token distinct from EOS (e.g. tokenizer.add_special_tokens("
            "{'pad_token': '<pad>'}) and resize the embeddings)"
        )
    pad = int(pad_token_id)
    if pad in eos_ids:
        raise ValueError(
            f"pad_token_id ({pad}) equals an eos_token_id {eos_ids}: pad and EOS must be distinct, otherwise "
            "the EOS token is masked out of the loss and the policy never learns to stop"
        )
    return pad


def _model_device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def _left_pad(
    prompt_ids: Sequence[Sequence[int]], pad_token_id: int, device: torch.device
) -> tuple[torch.LongTensor, torch.LongTensor, list[int]]:
    """Left-pad token lists into (B, P) ids and mask; also returns the python lengths (no device sync)."""
    if len(prompt_ids) == 0:
        raise ValueError("prompt_ids is empty: give at least one prompt")
    lengths = [len(p) for p in prompt_ids]
    if min(lengths) == 0:
        raise ValueError(f"prompt {lengths.index(0)} is empty: every prompt needs at least one token")
    width = max(lengths)
    ids = [[pad_token_id] * (width - n) + list(p) for p, n in zip(prompt_ids, lengths)]
    mask = [[0] * (width - n) + [1] * n for n in lengths]
    return (
        torch.tensor(ids, dtype=torch.long, device=device),
        torch.tensor(mask, dtype=torch.long, device=device),
        lengths,
    )


def _top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Set every logit below the k-th largest to -inf.

    Args:
        logits: (B, V) scores.
        top_k: k; 0 or >= V is a no-op.

    Returns:
        (B, V) filtered scores (ties with the k-th value are kept).
    """
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose total probability is >= ``top_p``.

    A token is removed when the probability mass of the strictly more likely tokens already reaches
    ``top_p``; the most likely token is therefore always kept.

    Args:
        logits: (B, V) scores (any shift; the softmax over them defines the distribution).
        top_p: in (0, 1]; 1 is a no-op.

    Returns:
        (B, V) scores with the tokens outside the nucleus set to -inf.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
    sorted_probs = sorted_logits.softmax(dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    remove_sorted = mass_before >= top_p
    remove = torch.zeros_like(remove_sorted).scatter_(-1, sorted_idx, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def _race(logp: torch.Tensor, generator: torch.Generator | None) -> torch.LongTensor:
    """Draw one index per row from ``softmax(logp)`` with the exponential race ``argmax(logp - log E)``.

    E ~ Exp(1) i.i.d.; this samples exactly like ``torch.multinomial`` but is an elementwise op and an argmax
    (no host sync on GPU). ``logp`` may hold -inf for filtered entries and need not be normalised.

    Args:
        logp: (B, N) log-weights.
        generator: RNG for the noise (its device may differ from ``logp``'s), or None for the global one.

    Returns:
        (B,) sampled indices in [0, N).
    """
    noise_device = generator.device if generator is not None else logp.device
    noise = torch.empty(logp.shape, dtype=logp.dtype, device=noise_device).exponential_(generator=generator)
    noise = noise.to(logp.device).clamp_(min=torch.finfo(logp.dtype).tiny)  # log(0) would turn -inf into nan
    return (logp - noise.log_()).argmax(dim=-1)


def _sample(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[torch.LongTensor, torch.FloatTensor]:
    """Pick one token per row and return it with its log-prob.

    Filtering follows ``model.generate``'s order (temperature, then top-k, then top-p on the renormalised
    top-k distribution). With top-k on, the nucleus and the draw work on the k candidates only (``topk``
    returns them sorted), so no full-vocabulary sort happens.

    Args:
        logits: (B, V) float32 next-token logits.
        params: sampling parameters.
        generator: RNG for the noise, or None for the global one.

    Returns:
        tokens (B,) and their log-probs (B,) under ``log_softmax(logits / temperature)`` (temperature 1 when
        greedy), computed before filtering.
    """
    if params.greedy:
        tokens = logits.argmax(dim=-1)
        logp = logits.log_softmax(dim=-1)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
    logp = (logits / params.temperature).log_softmax(dim=-1)
    if 0 < params.top_k < logp.shape[-1]:
        cand_logp, cand_idx = torch.topk(logp, params.top_k, dim=-1)  # (B, k), sorted descending
        if params.top_p < 1.0:
            probs = cand_logp.softmax(dim=-1)
            cand_logp = cand_logp.masked_fill(probs.cumsum(dim=-1) - probs >= params.top_p, float("-inf"))
        tokens = cand_idx.gather(-1, _race(cand_logp, generator)[:, None]).squeeze(-1)
    else:
        tokens = _race(_top_p_filter(logp, params.top_p), generator)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


class _PreallocatedLayer(DynamicLayer if DynamicLayer is not None else object):
    """A ``DynamicLayer`` whose keys/values live in a buffer sized for the whole rollout.

    ``DynamicLayer.update`` concatenates, copying the entire cache at every decode step (quadratic memory
    traffic in the completion length); this layer writes the new step into place and exposes views.

    Args:
        keys: (B, H, L, D) keys from the prefill.
        values: (B, H, L, D) values from the prefill.
        capacity: sequence capacity of the buffer (>= L); it doubles if ever exceeded.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        super().__init__()
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._len = keys.shape[-2]
        self._kbuf = self._alloc(keys, capacity)
        self._vbuf = self._alloc(values, capacity)
        self._refresh()

    def _alloc(self, x: torch.Tensor, capacity: int) -> torch.Tensor:
        buf = x.new_empty((*x.shape[:-2], max(capacity, x.shape[-2]), x.shape[-1]))
        buf[..., : x.shape[-2], :] = x
        return buf

    def _refresh(self) -> None:
        self.keys = self._kbuf[..., : self._len, :]
        self.values = self._vbuf[..., : self._len, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n = key_states.shape[-2]
        if self._len + n > self._kbuf.shape[-2]:
            self._kbuf = self._alloc(self.keys, 2 * (self._len + n))
            self._vbuf = self._alloc(self.values, 2 * (self._len + n))
        self._kbuf[..., self._len : self._len + n, :] = key_states
        self._vbuf[..., self._len : self._len + n, :] = value_states
        self._len += n
        self._refresh()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._len

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        self._len = max(0, self._len + tokens_to_remove)
        self._refresh()

    def _select(self, fn) -> None:
        self._kbuf, self._vbuf = fn(self._kbuf), fn(self._vbuf)
        self._refresh()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._select(lambda b: b.index_select(0, indices.to(b.device)))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._select(lambda b: b.index_select(0, beam_idx.to(b.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._select(lambda b: b.repeat_interleave(repeats, dim=0))

    def offload(self) -> None:  # the buffers are the storage; moving the views would desynchronise them
        pass

    def prefetch(self) -> None:
        pass


def _cache_kwarg(model) -> str:
    """The name the model's forward takes the KV cache by: ``cache`` (transformers 5.2x) or ``past_key_values``.

    Passing the old name to a new model works but warns on every decode step (and is going away).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper passes it on
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _cache_of(out: Any) -> Any:
    """The KV cache a forward pass returned: ``out.cache`` (transformers 5.2x) or ``out.past_key_values``.

    On a new model, reading ``past_key_values`` works but warns (deprecated) on every decode step.
    """
    return out["cache"] if "cache" in out else out.past_key_values  # noqa: SIM401 (.get would read the deprecated name eagerly)


def _preallocate(cache: Any, capacity: int) -> bool:
    """Swap the cache's plain full-attention ``DynamicLayer``s for :class:`_PreallocatedLayer`s, in place.

    Other layer kinds (sliding window, linear attention, quantized) are left as they are; returns whether
    anything was swapped. A cache that is not a transformers ``Cache`` with ``layers`` is left untouched.
    """
    layers = getattr(cache, "layers", None)
    if DynamicLayer is None or not isinstance(layers, list):
        return False
    swapped = False
    for i, layer in enumerate(layers):
        if (
            type(layer) is DynamicLayer
            and layer.is_initialized
            and layer.keys is not None
            and layer.keys.dim() == 4
        ):
            layers[i] = _PreallocatedLayer(layer.keys, layer.values, capacity)
            swapped = True
    return swapped


# --------------------------------------------------------------------------------------------------------
# The default backend
# --------------------------------------------------------------------------------------------------------


class GenerationStopped(RuntimeError):
    """:meth:`TorchBackend.generate` was told to stop (its ``should_stop`` returned true) before it finished."""


class TorchBackend:
    """Our own decode loop over the Hugging Face KV cache (``DynamicCache`` / ``past_key_values``).

    Works with any ``AutoModelForCausalLM`` (and peft wrappers): it only calls ``model(...)`` with
    ``input_ids``, ``attention_mask``, ``position_ids``, ``past_key_values`` and ``use_cache``.

    Args:
        share_prompt_prefill: run the prefill once per *distinct* prompt and copy its cache to the rows
            that repeat it (GRPO/RLOO sample G completions per prompt, so this divides prefill work by G).
        compact_finished: drop finished rows from the batch and the KV cache once at least
            ``compact_fraction`` of the running batch has stopped, so long-tail steps only compute live
            rows. Sampling stays exact; only the RNG stream layout differs from ``compact_finished=False``.
        compact_fraction: the fraction (of the running batch) of finished rows that triggers a compaction;
            a compaction costs about one copy of the cache, so compacting for a single row of a large batch
            is not worth it.
        preallocate_cache: after the prefill, move the KV cache into buffers sized for prompt + completion,
            so decode steps write in place instead of concatenating (copying) the whole cache each step.
    """

    def __init__(
        self,
        *,
        share_prompt_prefill: bool = True,
        compact_finished: bool = True,
        compact_fraction: float = 0.25,
        preallocate_cache: bool = True,
    ) -> None:
        if not 0.0 < compact_fraction <= 1.0:
            raise ValueError(f"compact_fraction must be in (0, 1], got {compact_fraction}")
        self.share_prompt_prefill = share_prompt_prefill
        self.compact_finished = compact_finished
        self.compact_fraction = compact_fraction
        self.preallocate_cache = preallocate_cache

    def generate(
        self,
        model: Any,
        prompt_ids: list[list[int]],
        params: SamplingParams,
        *,
        eos_token_id: int | list[int],
        pad_token_id: int,
        generator: torch.Generator | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Rollout:
        """Sample one completion per prompt; see :meth:`GenerationBackend.generate`.

        ``should_stop`` (optional, not part of the protocol) is asked before every decode step; when it returns
        true the call raises :class:`GenerationStopped`. A server uses it to abandon a request whose client
        went away instead of finishing a generation nobody will read.

        The model is put in eval mode for the call and its training flag restored afterwards. The loop runs
        under ``torch.inference_mode``; the returned tensors are cloned out of it, so they can be used as
        inputs of a later forward pass with autograd (inference tensors cannot).
        """
        eos_ids = _eos_list(eos_token_id)
        pad = _check_special_ids(eos_ids, pad_token_id)
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                out = self._generate(model, prompt_ids, params, eos_ids, pad, generator, should_stop)
        finally:
            model.train(was_training)
        # Outside inference mode: clones are normal tensors, usable by autograd later (e.g. embedding input).
        return Rollout(*(t.clone() for t in out))

    def _prefill(
        self,
        model: Any,
        ids: torch.LongTensor,
        mask: torch.LongTensor | None,
        position_ids: torch.LongTensor,
        prompts: Sequence[Sequence[int]],
        keep_last: bool,
    ) -> tuple[torch.Tensor, Any]:
        """Run the prompts through the model; returns (B, V) last-position logits and the KV cache."""
        extra = {"logits_to_keep": 1} if keep_last else {}
        rows = None
        if self.share_prompt_prefill:
            slot: dict[tuple[int, ...], int] = {}
            uniq: list[int] = []  # first row of each distinct prompt
            inverse = []  # row -> index into uniq
            for i, p in enumerate(prompts):
                key = tuple(p)
                if key not in slot:
                    slot[key] = len(uniq)
                    uniq.append(i)
                inverse.append(slot[key])
            if len(uniq) < len(prompts):
                rows = (torch.tensor(uniq, device=ids.device), torch.tensor(inverse, device=ids.device))
        if rows is not None:
            sel, inv = rows
            out = model(
                input_ids=ids[sel],
                attention_mask=None if mask is None else mask[sel],
                position_ids=position_ids[sel],
                use_cache=True,
                **extra,
            )
            cache = _cache_of(out)
            if hasattr(cache, "batch_select_indices"):
                cache.batch_select_indices(inv)
                return out.logits[:, -1, :].float()[inv], cache
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True, **extra)
        return out.logits[:, -1, :].float(), _cache_of(out)

    def _generate(
        self,
        model: Any,
        prompt_ids: list[list[int]],
        params: SamplingParams,
        eos_ids: list[int],
        pad: int,
        generator: torch.Generator | None,
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[torch.Tensor, ...]:
        device = _model_device(model)
        ids, mask, lengths = _left_pad(prompt_ids, pad, device)
        B, P = ids.shape
        T = params.max_new_tokens
        padded = min(lengths) < P

        # Full-width attention mask (B, P + T): prompt mask then ones. Finished rows keep attending to their
        # pad tokens, which is harmless: their later outputs are discarded. Without padding, no mask at all
        # (the model takes the fast causal path).
        full_mask = torch.cat([mask, mask.new_ones(B, T)], dim=1) if padded else None
        prompt_pos = position_ids_of(mask)
        # Position of completion token t is prompt_len + t (the prompt occupies 0 .. prompt_len - 1).
        step_pos = torch.tensor(lengths, device=device)[:, None] + torch.arange(T, device=device)

        logits, cache = self._prefill(
            model, ids, mask if padded else None, prompt_pos, prompt_ids, accepts_logits_to_keep(model)
        )

        if self.preallocate_cache and T > 1:
            _preallocate(cache, P + T)

        out_ids = ids.new_full((B, T), pad)
        out_mask = ids.new_zeros((B, T))
        out_lp = torch.zeros((B, T), dtype=torch.float32, device=device)
        eos_t = torch.tensor(eos_ids, device=device)
        single_eos = eos_ids[0] if len(eos_ids) == 1 else None
        can_compact = self.compact_finished and hasattr(cache, "batch_select_indices")

        rows: torch.Tensor | None = None  # original row of each running row; None = all rows, in order
        cur_mask, cur_pos = full_mask, step_pos
        cache_kwarg = _cache_kwarg(model)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        n_run = B
        steps = 0
        for t in range(T):
            tokens, lp = _sample(logits, params, generator)
            live = ~finished
            tokens = tokens.masked_fill(finished, pad)
            lp = lp.masked_fill(finished, 0.0)
            if rows is None:
                out_ids[:, t] = tokens
                out_lp[:, t] = lp
                out_mask[:, t] = live
            else:
                out_ids[rows, t] = tokens
                out_lp[rows, t] = lp
                out_mask[rows, t] = live.long()
            finished = finished | (
                tokens == single_eos if single_eos is not None else torch.isin(tokens, eos_t)
            )
            steps = t + 1
            if t == T - 1:
                break
            n_done = int(finished.sum())  # the one host sync per step, needed to stop early
            if n_done == n_run:
                break
            if should_stop is not None and should_stop():
                raise GenerationStopped(f"stopped after {steps} of {T} tokens")
            if can_compact and n_done > 0 and n_done >= self.compact_fraction * n_run:
                keep = (~finished).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                rows = keep if rows is None else rows[keep]
                tokens, finished = tokens[keep], finished[keep]
                cur_pos = cur_pos[keep]
                cur_mask = None if cur_mask is None else cur_mask[keep]
                n_run -= n_done
            out = model(
                input_ids=tokens[:, None],
                attention_mask=None if cur_mask is None else cur_mask[:, : P + t + 1],
                position_ids=cur_pos[:, t : t + 1],
                use_cache=True,
                **{cache_kwarg: cache},
            )
            logits = out.logits[:, -1, :].float()
            cache = _cache_of(out)

        eos_reached = (out_mask[:, :steps].bool() & torch.isin(out_ids[:, :steps], eos_t)).any(dim=1)
        return ids, mask, out_ids[:, :steps], out_mask[:, :steps], out_lp[:, :steps], eos_reached


def sync_backend_weights(backend: Any, model: Any, version: int) -> bool:
    """Call ``backend.sync_weights(model, version)`` when the backend has it; whether it had it.

    ``sync_weights`` is optional (a backend sampling in-process from ``model`` needs none), so third-party
    backends written before it existed keep working.
    """
    sync = getattr(backend, "sync_weights", None)
    if sync is None:
        return False
    sync(model, version)
    return True


# --------------------------------------------------------------------------------------------------------
# Text convenience
# --------------------------------------------------------------------------------------------------------


def generate_text(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    params: SamplingParams,
    *,
    batch_size: int = 64,
    backend: GenerationBackend | None = None,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Tokenize, left-pad, generate, and decode each completion up to (excluding) EOS.

    Tokenization uses ``add_special_tokens=False``: no special tokens beyond what the prompt (e.g. a chat
    template) already contains. Decoding uses ``skip_special_tokens=True``.

    EOS ids are the tokenizer's EOS plus the model's ``generation_config.eos_token_id`` (chat models often
    list an end-of-turn token there), excluding the pad id.

    Args:
        model: causal LM.
        tokenizer: a Hugging Face tokenizer with a pad token distinct from EOS.
        prompts: N prompt strings (already chat-formatted if needed).
        params: sampling parameters.
        batch_size: prompts per generation call.
        backend: defaults to :class:`TorchBackend`.
        generator: RNG for sampling.

    Returns:
        N completion strings, in prompt order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    backend = backend if backend is not None else TorchBackend()
    pad = tokenizer.pad_token_id
    eos = _eos_list(tokenizer.eos_token_id)
    gen_cfg = getattr(model, "generation_config", None)
    extra = getattr(gen_cfg, "eos_token_id", None) if gen_cfg is not None else None
    if extra is not None:
        eos += [i for i in ([extra] if isinstance(extra, int) else extra) if i not in eos and i != pad]
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        encoded = tokenizer(chunk, add_special_tokens=False)["input_ids"]
        rollout = backend.generate(
            model, encoded, params, eos_token_id=eos, pad_token_id=pad, generator=generator
        )
        lengths = (rollout.completion_lengths - rollout.eos_reached.long()).tolist()
        ids = rollout.completion_ids.tolist()
        texts += [tokenizer.decode(row[:n], skip_special_tokens=True) for row, n in zip(ids, lengths)]
    return texts
