"""Direct preference optimisation: learn from (prompt, chosen, rejected) pairs against a frozen reference.

Where the pairs come from is the reward source's business (``cfg.pairs``):

- ``dataset``: TRL's preference format, ``prompt``/``chosen``/``rejected`` columns (strings, or message lists
  rendered with the chat template);
- ``provider``: the reward provider's stored preferences, ``provider.preference_pairs()`` (e.g. ``human``);
- ``online``: each step samples ``num_generations`` completions per prompt from the current policy, ranks
  them with the provider (``score`` or pairwise ``compare``), and pairs the best with the worst (ties are
  skipped), then updates on those pairs: one round per step.

Read top to bottom: pairs -> token ids (prompt, chosen + EOS, rejected + EOS) -> reference log-probs (once up
front for fixed pairs; on the fly when ``precompute_ref`` is off and online) -> for each step, accumulate
micro-batches (chosen and rejected in one forward pass) -> clip, step, schedule (:class:`DPO`); the loop
(:func:`rewardhub.loop.run`) logs, evaluates and checkpoints around it.
The loss is the mean over *all pairs of the optimizer step* (across micro-batches and processes), so
``batch_size=8, grad_accum=4`` gives the same update as ``batch_size=32``.

The reference is the policy as loaded: with LoRA, the same model with its adapter disabled; otherwise, for
precomputed log-probs, the policy itself *before* its first update (no second copy in memory), and a frozen
second load when reference log-probs are needed during training. Precomputing happens before a checkpoint is
restored, so a resumed run recomputes exactly the same reference.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rewardhub.config import DPOConfig
from rewardhub.data import _split_chat, is_conversational, load_rows, render_prompt, require_columns
from rewardhub.engine import DataOrder, clip_and_step, make_optimizer, save_final_model
from rewardhub.errors import ConfigError, DataError, RewardProviderError
from rewardhub.evaluation import load_eval_rows
from rewardhub.logprobs import accepts_logits_to_keep
from rewardhub.loop import Callback, Outcome, run
from rewardhub.maths.preference import dpo_loss, sequence_logps
from rewardhub.models import LoraOptions, disable_dropout, load_model, load_tokenizer
from rewardhub.rewards import RewardProvider, Sample

log = logging.getLogger(__name__)

#: --reward when neither the flag nor the task names one
DPO_FALLBACK_REWARD = "exact-match"
#: per-pair statistics summed over a step (then divided by the number of pairs)
STAT_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
             "logps/chosen", "logps/rejected", "logps/accuracy")


# ------------------------------------------------------------------------------------------------------------
# pairs -> text -> token ids
# ------------------------------------------------------------------------------------------------------------

def pair_texts(row: Mapping[str, Any], tokenizer, index: int | None = None) -> tuple[str, str, str]:
    """(prompt text, chosen text, rejected text) of one preference row, validated.

    Strings pass through. A conversational prompt (a message list) is rendered with the chat template; a
    chosen/rejected reply is then either a message list or a string (the assistant's content), and its text
    is what the template renders after the prompt (as :func:`rewardhub.data.prompt_and_completion` does).

    Raises:
        DataError: naming the row, when the prompt is missing or empty, a reply is empty, or chosen equals
            rejected (such a pair teaches nothing and usually means a broken export).
    """
    where = f"row {index}" if index is not None else "row"
    prompt = row.get("prompt")
    if prompt is None or (isinstance(prompt, (str, list)) and len(prompt) == 0):
        raise DataError(f"{where}: the prompt is missing or empty; DPO pairs need prompt, chosen and rejected "
                        f"(row has columns {sorted(k for k, v in row.items() if v is not None)})")
    texts = []
    for key in ("chosen", "rejected"):
        reply = row.get(key)
        if reply is None or (isinstance(reply, (str, list)) and len(reply) == 0) or (
                isinstance(reply, str) and not reply.strip()):
            raise DataError(f"{where}: `{key}` is empty; every pair needs a non-empty chosen and rejected reply")
        texts.append(reply)
    chosen, rejected = texts
    if chosen == rejected:
        raise DataError(f"{where}: chosen and rejected are identical ({_short(chosen)}); the pair carries no "
                        "preference. Drop such rows from the data")
    if is_conversational(prompt) or is_conversational(chosen) or is_conversational(rejected):
        if not is_conversational(prompt):
            raise DataError(f"{where}: chosen/rejected are message lists but the prompt is not; give the prompt "
                            "as a message list too")
        replies = []
        for key, reply in (("chosen", chosen), ("rejected", rejected)):
            messages = reply if is_conversational(reply) else [{"role": "assistant", "content": str(reply)}]
            replies.append(_split_chat(tokenizer, prompt, list(prompt) + list(messages), f"{where} ({key})"))
        (prompt_text, chosen_text), (prompt_text2, rejected_text) = replies
        if prompt_text != prompt_text2:  # cannot happen with a deterministic template
            raise DataError(f"{where}: the chat template rendered the prompt differently for chosen and rejected")
        return prompt_text, chosen_text, rejected_text
    if not isinstance(prompt, str):
        raise DataError(f"{where}: prompt must be a string or a list of messages, got {type(prompt).__name__}")
    return prompt, str(chosen), str(rejected)


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "...'"


def encode_completion(tokenizer, text: str) -> list[int]:
    """Token ids of a reply, ending in EOS (added unless the text, e.g. a chat template's, already ends in it)."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if not ids or ids[-1] != tokenizer.eos_token_id:
        ids = [*ids, tokenizer.eos_token_id]
    return ids


def tokenize_pairs(rows: Sequence[Mapping[str, Any]], tokenizer, max_length: int) -> list[dict[str, list[int]]]:
    """Rows -> ``{"prompt", "chosen", "rejected"}`` token ids (replies end in EOS).

    Replies are cut from the right to ``max_length``; the shared prompt is cut from the left so that prompt +
    the longer reply fits ``max_length`` (chosen and rejected always see the same prompt).
    """
    examples = []
    for i, row in enumerate(rows):
        prompt, chosen, rejected = pair_texts(row, tokenizer, i)
        p_ids = tokenizer(prompt, add_special_tokens=False).input_ids if prompt else []
        c_ids = encode_completion(tokenizer, chosen)[:max_length]
        r_ids = encode_completion(tokenizer, rejected)[:max_length]
        budget = max_length - max(len(c_ids), len(r_ids))
        p_ids = p_ids[len(p_ids) - budget:] if 0 < budget < len(p_ids) else (p_ids if budget > 0 else [])
        examples.append({"prompt": p_ids, "chosen": c_ids, "rejected": r_ids})
    if not examples:
        raise DataError("the DPO data has no pairs")
    return examples


def collate_pairs(examples: Sequence[Mapping[str, list[int]]], pad_id: int):
    """Right-padded ``(2B, L)`` ids, attention mask and loss mask: rows ``:B`` chosen, ``B:`` rejected.

    The loss mask is 1 on reply tokens (EOS included), 0 on the prompt and padding.
    """
    import torch

    seqs = [(e["prompt"], e[side]) for side in ("chosen", "rejected") for e in examples]
    width = max(len(p) + len(c) for p, c in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    loss_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (p, c) in enumerate(seqs):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        mask[i, :n] = 1
        loss_mask[i, len(p):n] = 1
    return ids, mask, loss_mask


def batch_logps(model, ids, mask, loss_mask, average: bool = False):
    """``(2B,)`` log-prob of each row's reply (sum, or per-token mean when ``average``).

    Logits are computed only from the first reply position on (``logits_to_keep``), so prompt tokens never
    pay for the vocabulary projection and its log-softmax.
    """
    first = int(loss_mask.float().argmax(dim=1).min())  # earliest reply token over the batch
    start = max(first, 1)
    keep = ids.shape[1] - start + 1
    extra = {"logits_to_keep": keep} if accepts_logits_to_keep(model) else {}
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False, **extra).logits
    return sequence_logps(logits[:, -keep:-1], ids[:, start:], loss_mask[:, start:], average)


# ------------------------------------------------------------------------------------------------------------
# the reference model
# ------------------------------------------------------------------------------------------------------------

class Reference:
    """Reference log-probs: the LoRA policy with its adapter disabled, or a frozen model (no gradients)."""

    def __init__(self, model, adapter_disabled: bool, average: bool):
        self.model, self.adapter_disabled, self.average = model, adapter_disabled, average

    def logps(self, ids, mask, loss_mask):
        import torch

        with torch.no_grad():
            ctx = self.model.disable_adapter() if self.adapter_disabled else contextlib.nullcontext()
            with ctx:
                return batch_logps(self.model, ids, mask, loss_mask, self.average).float()


def precompute_reference(reference: Reference, examples: list[dict], batch_size: int, accelerator) -> None:
    """Store ``ref_chosen``/``ref_rejected`` in every example (each process scores its share, then all gather)."""
    from accelerate.utils import gather_object

    device = accelerator.device
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["prompt"]) - len(examples[i]["chosen"]))
    with accelerator.split_between_processes(order) as mine:
        scored = []
        for s in range(0, len(mine), batch_size):
            chunk = mine[s:s + batch_size]
            ids, mask, loss_mask = (t.to(device) for t in collate_pairs([examples[i] for i in chunk], 0))
            lp = reference.logps(ids, mask, loss_mask).tolist()
            scored += [(i, lp[k], lp[k + len(chunk)]) for k, i in enumerate(chunk)]
    for i, chosen, rejected in gather_object(scored) if accelerator.num_processes > 1 else scored:
        examples[i]["ref_chosen"], examples[i]["ref_rejected"] = chosen, rejected


# ------------------------------------------------------------------------------------------------------------
# the recipe
# ------------------------------------------------------------------------------------------------------------

def train_dpo(cfg: DPOConfig, provider: RewardProvider | None = None,
              callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Run DPO as configured; returns the final metrics (held-out ones when there is held-out data).

    Args:
        cfg: the validated configuration (``cfg.pairs`` picks the pair source).
        provider: the reward provider for ``pairs=provider|online`` (built from ``cfg.reward`` when None).
        callbacks: called as ``cb(step, metrics)`` after every optimizer step.
    """
    cfg.validate()
    source, train_rows = resolve_pair_source(cfg, provider)
    own_provider = source in ("provider", "online") and provider is None
    if own_provider:
        from rewardhub.reward_resolution import build_reward, reward_spec_of

        provider = build_reward(reward_spec_of(cfg, DPO_FALLBACK_REWARD), cfg.reward_args)
    try:
        if source == "provider":
            train_rows = pairs_from_provider(provider)
        return run(DPO(cfg, source, train_rows, provider), cfg, callbacks)
    finally:
        if own_provider:
            provider.close()


@dataclass
class DPOState:
    """What a DPO step needs, built once by :meth:`DPO.setup`."""

    cfg: DPOConfig
    accelerator: Any
    model: Any  # prepared
    tokenizer: Any
    reference: Reference | None  # None: every example carries precomputed reference log-probs
    provider: RewardProvider | None
    average: bool  # length-normalised log-probs (IPO)
    optimizer: Any = None
    scheduler: Any = None
    train_rows: Any = None  # the prompts of online DPO
    examples: list[dict] | None = None  # fixed pairs, tokenised
    eval_rows: Any = None
    eval_examples: list[dict] | None = None
    order: DataOrder | None = None

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


class DPO:
    """The DPO recipe for :func:`rewardhub.loop.run`: held-out metrics before (``initial/``) and after."""

    eval_before = True

    def __init__(self, cfg: DPOConfig, source: str, train_rows, provider: RewardProvider | None):
        self.cfg, self.source, self.train_rows, self.provider = cfg, source, train_rows, provider
        self.label = f"dpo ({source} pairs)"

    def setup(self, accelerator) -> DPOState:
        cfg, source = self.cfg, self.source
        tokenizer = load_tokenizer(cfg.model)
        model = load_model(cfg.model, dtype=cfg.dtype, gradient_checkpointing=cfg.gradient_checkpointing,
                           lora=LoraOptions(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout), tokenizer=tokenizer)
        disable_dropout(model)  # log-prob ratios against the reference must compare like with like
        model.to(accelerator.device)
        state = DPOState(cfg, accelerator, model, tokenizer, None, self.provider, cfg.loss_type == "ipo",
                         train_rows=self.train_rows)
        if source != "provider" or cfg.eval_data:
            state.eval_rows = load_eval_rows(cfg.data, cfg.eval_data, cfg.data_args, cfg.column_map, cfg.eval_size)
        if source == "online":
            require_columns(state.train_rows, ["prompt"], "online DPO", non_empty=True)
            if state.eval_rows is not None:
                require_columns(state.eval_rows, ["prompt"], "online DPO evaluation", non_empty=True)
        else:
            state.examples = tokenize_pairs(state.train_rows, tokenizer, cfg.max_length)
            if state.eval_rows is not None:
                state.eval_examples = tokenize_pairs(state.eval_rows, tokenizer, cfg.max_length)
        state.reference = make_reference(state, source != "online" and cfg.precompute_ref)
        state.optimizer, state.scheduler = make_optimizer(model, cfg, accelerator.num_processes)
        state.model, state.optimizer, state.scheduler = accelerator.prepare(model, state.optimizer, state.scheduler)
        if state.reference is not None and cfg.lora_r > 0:
            state.reference.model = accelerator.unwrap_model(state.model)
        n = len(state.train_rows) if source == "online" else len(state.examples)
        state.order = DataOrder(n, cfg.seed)
        state.model.train()
        return state

    def step(self, state: DPOState, step: int) -> dict[str, float]:
        cfg, world, micro = self.cfg, state.accelerator.num_processes, self.cfg.batch_size
        if self.source == "online":
            batches, extra = online_round(state, state.train_rows, state.order, step, world, micro)
        else:
            batches, extra = offline_batches(state, state.examples, state.order, step, world, micro), {}
        metrics = _optimizer_step(state, batches, state.optimizer, state.scheduler)
        metrics.update(extra)
        metrics["lr"] = state.scheduler.get_last_lr()[0]
        metrics["epoch"] = state.order.epoch_of(step * cfg.grad_accum, micro * world)
        return metrics

    def evaluate(self, state: DPOState) -> dict[str, float] | None:
        if state.eval_rows is None:
            return None
        if self.source == "online":
            return evaluate_online(state, state.eval_rows)
        return evaluate_pairs(state, state.eval_examples)

    def finish(self, state: DPOState, outcome: Outcome) -> dict[str, Any]:
        final: dict[str, Any] = {f"initial/{k}": v for k, v in outcome.before.items()}
        final.update({f"train/{k}": v for k, v in outcome.last.items()})
        final.update(outcome.after)
        final.update({"steps": outcome.steps, "pair_source": self.source})
        if state.examples is not None:
            final["train_pairs"] = len(state.examples)
        final["model_path"] = str(save_final_model(state.accelerator, state.model, state.tokenizer, self.cfg.out))
        return final


def make_reference(state: DPOState, precompute: bool) -> Reference | None:
    """The reference: fixed pairs are scored once now (``precompute``), else a live reference model.

    Precomputed: by the policy before any update (adapter disabled with LoRA), before a checkpoint is
    restored, into each example's ``ref_chosen``/``ref_rejected``; returns None. Live: the adapter-disabled
    policy with LoRA, otherwise a frozen second copy.
    """
    cfg, accelerator, use_lora = state.cfg, state.accelerator, state.cfg.lora_r > 0
    if precompute:
        initial = Reference(state.model, use_lora, state.average)
        for examples in (state.examples, state.eval_examples):
            if examples is not None:
                precompute_reference(initial, examples, cfg.batch_size, accelerator)
        return None
    if use_lora:
        return Reference(state.model, True, state.average)
    frozen = load_model(cfg.model, dtype=cfg.dtype, tokenizer=state.tokenizer, device=str(accelerator.device))
    frozen.eval().requires_grad_(False)
    disable_dropout(frozen)
    return Reference(frozen, False, state.average)


def resolve_pair_source(cfg: DPOConfig, provider: RewardProvider | None):
    """(source, training rows or None): ``cfg.pairs`` with ``auto`` resolved from the provider and the data.

    ``auto`` takes a provider that stores preferences (``--reward=human``) first: naming it is the user's
    choice of pairs, while ``--data`` may just be the default task.
    """
    if cfg.pairs == "provider" or (cfg.pairs == "auto" and provider is not None and stores_pairs(provider)):
        return "provider", None
    rows = load_rows(cfg.data, "train", cfg.data_args, cfg.column_map)
    has_pairs = all(c in rows.column_names for c in ("chosen", "rejected"))
    if cfg.pairs == "dataset":
        require_columns(rows, ["prompt", "chosen", "rejected"], "DPO with --pairs dataset")
        return "dataset", rows
    if cfg.pairs == "online":
        return "online", rows
    if has_pairs:
        require_columns(rows, ["prompt", "chosen", "rejected"], "DPO on preference data")
        return "dataset", rows
    if "prompt" not in rows.column_names:
        raise DataError(f"DPO data {cfg.data!r} has neither chosen/rejected columns (offline pairs) nor a prompt "
                        f"column (online pairs); it has {rows.column_names}")
    return "online", rows


def stores_pairs(provider: RewardProvider) -> bool:
    """Whether the provider overrides ``preference_pairs`` (a store of preferences, e.g. ``human``)."""
    return type(provider).preference_pairs is not RewardProvider.preference_pairs


def pairs_from_provider(provider: RewardProvider) -> list[dict[str, Any]]:
    """The provider's stored preferences as preference rows."""
    try:
        pairs = list(provider.preference_pairs())
    except NotImplementedError as exc:
        raise ConfigError(str(exc)) from None
    if not pairs:
        raise DataError(f"reward provider {provider.display_name} returned no preference pairs")
    return [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]


# ------------------------------------------------------------------------------------------------------------
# batches: fixed pairs, or one online round
# ------------------------------------------------------------------------------------------------------------

def offline_batches(ctx: DPOState, examples, order: DataOrder, step: int, world: int, micro: int) -> list[list]:
    """This process's micro-batches (lists of examples) for ``step``."""
    shares = order.step_batches(ctx.accelerator, step, ctx.cfg.grad_accum, micro)
    return [[examples[i] for i in mine] for mine in shares]


def online_round(ctx: DPOState, rows, order: DataOrder, step: int, world: int, micro: int):
    """Sample ``num_generations`` completions per prompt, rank them, pair best vs worst; returns micro-batches.

    Sampling is seeded by (seed, step, process), so a resumed run draws the same completions.
    """
    import torch

    from rewardhub.generation import SamplingParams, generate_text

    cfg, accelerator = ctx.cfg, ctx.accelerator
    picked = [i for mine in order.step_batches(accelerator, step, cfg.grad_accum, micro) for i in mine]
    prompt_rows = [rows[i] for i in picked]
    prompts = [render_prompt(r["prompt"], ctx.tokenizer) for r in prompt_rows]
    g = cfg.num_generations
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            top_k=cfg.top_k)
    generator = torch.Generator(accelerator.device).manual_seed(
        cfg.seed * 1_000_003 + step * 7919 + accelerator.process_index)
    policy = accelerator.unwrap_model(ctx.model)
    completions = generate_text(policy, ctx.tokenizer, [p for p in prompts for _ in range(g)], params,
                                batch_size=max(len(prompts) * g, 1), generator=generator)
    pairs, stats = rank_and_pair(ctx.provider, prompts, prompt_rows, completions, g, cfg.rank_with)
    examples = []
    for prompt, chosen, rejected in pairs:
        p_ids = ctx.tokenizer(prompt, add_special_tokens=False).input_ids
        c_ids = encode_completion(ctx.tokenizer, chosen)
        r_ids = encode_completion(ctx.tokenizer, rejected)
        examples.append({"prompt": p_ids, "chosen": c_ids, "rejected": r_ids})
    per = max(1, -(-len(examples) // cfg.grad_accum))
    batches = [examples[i:i + per] for i in range(0, len(examples), per)]
    return batches, stats


def rank_and_pair(provider: RewardProvider, prompts: list[str], rows: list, completions: list[str], g: int,
                  rank_with: str = "score") -> tuple[list[tuple[str, str, str]], dict[str, float]]:
    """Best-vs-worst pairs from ``g`` consecutive completions per prompt.

    ``rank_with="score"`` ranks by ``provider(samples)`` values (failed samples are left out);
    ``"compare"`` ranks by the sum of ``provider.compare(prompt, a, b)`` over a round robin. A prompt whose
    best and worst are tied (or identical text), or with fewer than two usable samples, gives no pair.
    """
    pairs, scores, failed = [], [], 0
    if rank_with == "score":
        samples = [Sample(prompts[i // g], completions[i], dict(rows[i // g])) for i in range(len(completions))]
        rewards = provider(samples)
        for j, prompt in enumerate(prompts):
            group = [(rewards[j * g + t].value, completions[j * g + t]) for t in range(g)
                     if rewards[j * g + t].usable]
            failed += g - len(group)
            scores += [v for v, _ in group]
            _pair_group(prompt, group, pairs)
    else:
        for j, prompt in enumerate(prompts):
            texts = completions[j * g:(j + 1) * g]
            wins = [0.0] * g
            broken = False
            for a in range(g):
                for b in range(a + 1, g):
                    try:
                        p = float(provider.compare(prompt, texts[a], texts[b], dict(rows[j])))
                    except RewardProviderError:
                        broken = True
                        continue
                    wins[a] += p
                    wins[b] += 1.0 - p
            failed += int(broken)
            scores += wins
            _pair_group(prompt, list(zip(wins, texts)), pairs)
    ties = len(prompts) - len(pairs)
    stats = {"online/pairs": float(len(pairs)), "online/skipped": float(ties), "online/failed": float(failed)}
    if scores:
        stats["online/score_mean"] = statistics.fmean(scores)
        stats["online/score_std"] = statistics.pstdev(scores)
    stats.update({f"reward/{k}": v for k, v in provider.metrics().items()})
    return pairs, stats


def _pair_group(prompt: str, group: list[tuple[float, str]], pairs: list) -> bool:
    if len(group) < 2:
        return False
    best = max(group, key=lambda x: x[0])
    worst = min(group, key=lambda x: x[0])
    if best[0] == worst[0] or best[1] == worst[1]:
        return False
    pairs.append((prompt, best[1], worst[1]))
    return True


# ------------------------------------------------------------------------------------------------------------
# one optimizer step
# ------------------------------------------------------------------------------------------------------------

def _pair_stats(losses, pc, pr, rc, rr) -> dict[str, float]:
    return {"loss": float(losses.detach().sum()), "rewards/chosen": float(rc.sum()),
            "rewards/rejected": float(rr.sum()), "rewards/margins": float((rc - rr).sum()),
            "rewards/accuracies": float((rc > rr).float().sum()), "logps/chosen": float(pc.detach().sum()),
            "logps/rejected": float(pr.detach().sum()), "logps/accuracy": float((pc > pr).float().sum())}


def _ref_logps(ctx: DPOState, batch, ids, mask, loss_mask):
    import torch

    if batch and "ref_chosen" in batch[0]:
        ref = [e["ref_chosen"] for e in batch] + [e["ref_rejected"] for e in batch]
        return torch.tensor(ref, dtype=torch.float32, device=ids.device)
    return ctx.reference.logps(ids, mask, loss_mask)


def chosen_nll(chosen_logps, chosen_mask, averaged: bool):
    """(B,) per-token negative log-likelihood of each chosen reply: the RPO term (Pang et al., 2024).

    Added to the DPO loss with weight ``rpo_alpha``, it keeps the chosen replies' likelihood from falling
    along with the rejected ones', a known failure of plain DPO on pairs that differ in a token or two.
    """
    if averaged:  # IPO already passes per-token means
        return -chosen_logps
    return -chosen_logps / chosen_mask.sum(-1).clamp_min(1).to(chosen_logps.dtype)


def _optimizer_step(ctx: DPOState, batches: list[list], optimizer, scheduler) -> dict[str, float]:
    """One optimizer step over the micro-batches; the loss is the mean over every pair of the step."""
    import torch

    cfg, accelerator, model = ctx.cfg, ctx.accelerator, ctx.model
    world = accelerator.num_processes
    batches = [b for b in batches if b]
    local_pairs = sum(len(b) for b in batches)
    total_pairs = int(accelerator.reduce(torch.tensor(local_pairs, device=accelerator.device), "sum"))
    sums = dict.fromkeys(STAT_KEYS, 0.0)
    tokens = 0
    for k, batch in enumerate(batches):
        ids, mask, loss_mask = (t.to(accelerator.device) for t in collate_pairs(batch, ctx.pad_id))
        ref = _ref_logps(ctx, batch, ids, mask, loss_mask)
        n = len(batch)
        sync = k == len(batches) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            logps = batch_logps(model, ids, mask, loss_mask, ctx.average)
            losses, rc, rr = dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], cfg.beta, cfg.loss_type,
                                      cfg.label_smoothing)
            if cfg.rpo_alpha:
                losses = losses + cfg.rpo_alpha * chosen_nll(logps[:n], loss_mask[:n], ctx.average)
            # DDP averages gradients over processes, so scale by world size to get the global pair mean.
            accelerator.backward(losses.sum() * world / max(total_pairs, 1))
        for key, v in _pair_stats(losses, logps[:n], logps[n:], rc, rr).items():
            sums[key] += v
        tokens += int(mask.sum())
    grad_norm = clip_and_step(accelerator, model, optimizer, cfg.max_grad_norm, scheduler, apply=bool(total_pairs))
    values = accelerator.reduce(torch.tensor([sums[k] for k in STAT_KEYS], device=accelerator.device), "sum")
    metrics = {k: float(v) / max(total_pairs, 1) for k, v in zip(STAT_KEYS, values.tolist())}
    metrics.update({"grad_norm": grad_norm, "pairs": float(total_pairs), "tokens": tokens})
    return metrics


# ------------------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------------------

def evaluate_pairs(ctx: DPOState, examples: list[dict]) -> dict[str, float]:
    """Held-out DPO loss, implicit-reward accuracy/margin, and ``logps/accuracy``: the share of pairs where
    the policy gives the chosen reply a higher log-prob than the rejected one."""
    import torch

    cfg, accelerator, model = ctx.cfg, ctx.accelerator, ctx.model
    model.eval()
    sums = dict.fromkeys(STAT_KEYS, 0.0)
    with torch.no_grad():
        for s in range(0, len(examples), cfg.batch_size):
            batch = examples[s:s + cfg.batch_size]
            ids, mask, loss_mask = (t.to(accelerator.device) for t in collate_pairs(batch, ctx.pad_id))
            ref = _ref_logps(ctx, batch, ids, mask, loss_mask)
            logps = batch_logps(model, ids, mask, loss_mask, ctx.average)
            n = len(batch)
            losses, rc, rr = dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], cfg.beta, cfg.loss_type,
                                      cfg.label_smoothing)
            for key, v in _pair_stats(losses, logps[:n], logps[n:], rc, rr).items():
                sums[key] += v
    model.train()
    return {k: v / max(len(examples), 1) for k, v in sums.items()}


def evaluate_online(ctx: DPOState, rows) -> dict[str, float]:
    """Mean provider score of greedy completions for held-out prompts (and accuracy for correctness rewards)."""
    from rewardhub.evaluation import score_greedy

    model = ctx.accelerator.unwrap_model(ctx.model)
    out = score_greedy(model, ctx.tokenizer, rows, ctx.provider, ctx.cfg.eval_max_new_tokens,
                       batch_size=max(ctx.cfg.batch_size, 1))
    ctx.model.train()
    return out
