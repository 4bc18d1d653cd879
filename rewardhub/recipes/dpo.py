"""Direct preference optimisation: learn from (prompt, chosen, rejected) pairs against a frozen reference.

Where the pairs come from is the reward source's business (``cfg.pairs``):

- ``dataset``: TRL's preference format, ``prompt``/``chosen``/``rejected`` columns (strings, or message lists
  rendered with the chat template);
- ``provider``: the reward provider's stored preferences, ``provider.preference_pairs()`` (e.g. ``human``);
- ``online``: each step samples ``num_generations`` completions per prompt from the current policy, ranks
  them with the provider (``score`` or pairwise ``compare``), and pairs the best with the worst (ties are
  skipped), then updates on those pairs: one round per step. Like RL, a step whose share of failed rewards
  passes ``max_failure_rate`` stops the run (``RewardProviderError``, finished steps checkpointed); a run
  whose first :data:`PAIRLESS_STEPS` steps formed no pair at all stops too, saying why (ties or failures).

``auto`` picks one of the three and says which and why (:func:`resolve_pair_source`); data in a format DPO
cannot use as pairs, such as unpaired (KTO) prompt/completion/label rows, is refused by name before any model
loads.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from rewardhub.config import DPOConfig
from rewardhub.data import (
    FORMATS,
    IMPLICIT_PROMPT_NOTE,
    _split_chat,
    describe_format,
    find_format,
    has_implicit_prompt,
    is_conversational,
    load_rows,
    render_prompt,
    require_columns,
    with_explicit_prompts,
)
from rewardhub.engine import DataOrder, clip_and_step, make_optimizer, save_final_model
from rewardhub.errors import ConfigError, DataError, RewardProviderError, TrainingError
from rewardhub.evaluation import load_eval_rows
from rewardhub.logprobs import accepts_logits_to_keep
from rewardhub.loop import Callback, Outcome, run
from rewardhub.maths.preference import dpo_loss, sequence_logps
from rewardhub.models import LoraOptions, check_lengths_fit, disable_dropout, load_model, load_tokenizer
from rewardhub.rewards import RewardProvider, Sample, check_failure_rate, first_failure
from rewardhub.run_dir import claim

log = logging.getLogger(__name__)

#: --reward when neither the flag nor the task names one
DPO_FALLBACK_REWARD = "exact-match"
#: online DPO stops when its first this many steps (all of them, in a shorter run) formed no pair at all
PAIRLESS_STEPS = 10
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

def train_dpo(cfg: DPOConfig, provider: RewardProvider | None = None, callbacks: Sequence[Callback] = (),
              announce: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Run DPO as configured; returns the final metrics (held-out ones when there is held-out data).

    Args:
        cfg: the validated configuration (``cfg.pairs`` picks the pair source).
        provider: the reward provider for ``pairs=provider|online`` (built from ``cfg.reward`` when None).
        callbacks: called as ``cb(step, metrics)`` after every optimizer step.
        announce: called with the line that says where the pairs come from and why (``pairs: dataset (...)``),
            before any model loads; default: logged at INFO. The CLI prints it.
    """
    cfg.validate()
    chosen = resolve_pair_source(cfg, provider)  # a format DPO cannot use is named before anything else
    check_lengths_fit(cfg)  # from the model's config: before the weights load
    with claim(cfg):  # an --out this run may not use is refused before the pairs line, provider or model
        (announce or log.info)(chosen.line)
        return _train_on_pairs(cfg, chosen, provider, callbacks)


def _train_on_pairs(cfg: DPOConfig, chosen: PairSource, provider: RewardProvider | None,
                    callbacks: Sequence[Callback]) -> dict[str, Any]:
    source, train_rows = chosen.source, chosen.rows
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
    tally: OnlineTally | None = None  # online: pairs formed since step 1 (checkpointed)

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
        tokenizer = load_tokenizer(cfg.model, cfg.chat_template)
        model = load_model(cfg.model, dtype=cfg.dtype, gradient_checkpointing=cfg.gradient_checkpointing,
                           lora=LoraOptions.of(cfg), tokenizer=tokenizer)
        disable_dropout(model)  # log-prob ratios against the reference must compare like with like
        model.to(accelerator.device)
        state = DPOState(cfg, accelerator, model, tokenizer, None, self.provider, cfg.loss_type == "ipo",
                         train_rows=self.train_rows)
        if source != "provider" or cfg.eval_data:
            state.eval_rows = with_explicit_prompts(
                load_eval_rows(cfg.data, cfg.eval_data, cfg.data_args, cfg.column_map, cfg.eval_size))
        if source == "online":  # the training prompts were checked by resolve_pair_source
            if state.eval_rows is not None:
                require_columns(state.eval_rows, ["prompt"], "online DPO evaluation", non_empty=True)
            state.tally = OnlineTally()
            accelerator.register_for_checkpointing(state.tally)  # restored with the checkpoint, before step 1
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
            batches, extra, counts = online_round(state, state.train_rows, state.order, step, world, micro)
        else:
            batches, extra = offline_batches(state, state.examples, state.order, step, world, micro), {}
        metrics = _optimizer_step(state, batches, state.optimizer, state.scheduler)
        if self.source == "online":
            state.tally.add(counts)
            check_pairs_formed(state, step)
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
        final["model_path"] = str(save_final_model(state.accelerator, state.model, state.tokenizer, self.cfg.out,
                                                       self.cfg.merge_lora))
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


class PairSource(NamedTuple):
    """Where DPO's pairs come from (``dataset``, ``provider`` or ``online``), the training rows (None for the
    provider's pairs), and the line that tells the user which and why."""

    source: str
    rows: Any
    line: str


def resolve_pair_source(cfg: DPOConfig, provider: RewardProvider | None) -> PairSource:
    """``cfg.pairs`` with ``auto`` resolved from the provider and the data, and the reason, for the user.

    ``auto`` takes a provider that stores preferences (``--reward=human``) first: naming it is the user's
    choice of pairs, while ``--data`` may just be the default task. Then the data's format
    (:func:`rewardhub.data.find_format`): preference rows are the pairs (chosen/rejected without a prompt,
    TRL's implicit prompt, get it extracted first: :func:`rewardhub.data.with_explicit_prompts`); prompts (with
    or without SFT completions) are sampled and ranked online. Data that is neither, such as unpaired (KTO)
    prompt/completion/label rows, is refused by name, before any model loads.

    Raises:
        DataError: the data is empty, or in a format DPO cannot use the way ``cfg.pairs`` asks.
    """
    ranker = _ranker_name(cfg, provider)
    if cfg.pairs == "provider":
        return PairSource("provider", None, f"pairs: provider, the preferences {ranker} stores (--pairs provider)")
    if cfg.pairs == "auto" and provider is not None and stores_pairs(provider):
        return PairSource("provider", None, f"pairs: provider (--reward={ranker} stores preferences)")
    rows = load_rows(cfg.data, "train", cfg.data_args, cfg.column_map)
    if len(rows) == 0:
        raise DataError(f"--data {cfg.data} has no rows; DPO needs pairs (prompt, chosen, rejected), or prompts "
                        "to sample and rank (--pairs online)")
    implicit = has_implicit_prompt(rows.column_names)
    rows = with_explicit_prompts(rows)  # chosen/rejected without a prompt: TRL's implicit prompt, made explicit
    fmt = find_format(rows.column_names, rows)
    ranked = f"online, ranked by {'pairwise compare() of ' if cfg.rank_with == 'compare' else ''}{ranker}"
    if cfg.pairs == "online":
        require_columns(rows, ["prompt"], "online DPO", non_empty=True)
        extracted = "the prompts extracted from chosen/rejected (an implicit prompt)" if implicit else ""
        notes = [n for n in (extracted, _ignored(fmt)) if n]
        return PairSource("online", rows, f"pairs: {ranked} (--pairs online{''.join('; ' + n for n in notes)})")
    has_pairs = all(c in rows.column_names for c in ("chosen", "rejected"))
    if not has_pairs and fmt not in (None, "preference") and (
            cfg.pairs == "dataset" or fmt == "unpaired_preference" or "prompt" not in rows.column_names):
        raise DataError(_not_pairs(cfg.data, fmt))
    if cfg.pairs == "dataset" or has_pairs:
        require_columns(rows, ["prompt", "chosen", "rejected"],
                        "DPO with --pairs dataset" if cfg.pairs == "dataset" else "DPO on preference data")
        if implicit:
            why = ("--pairs dataset; " if cfg.pairs == "dataset" else "") + f"--data has {IMPLICIT_PROMPT_NOTE}"
        else:
            why = "--pairs dataset" if cfg.pairs == "dataset" else "--data has prompt/chosen/rejected columns"
        return PairSource("dataset", rows, f"pairs: dataset ({why})")
    if "prompt" not in rows.column_names:
        raise DataError(f"DPO data {cfg.data!r} has neither chosen/rejected columns (offline pairs) nor a prompt "
                        f"column (online pairs); it has {rows.column_names}")
    require_columns(rows, ["prompt"], "online DPO", non_empty=True)
    what = "prompt/completion (SFT) columns" if fmt == "prompt_completion" else "prompts"
    ignored = _ignored(fmt)
    return PairSource("online", rows, f"pairs: {ranked} (--data has {what} but no chosen/rejected"
                                      f"{'; ' + ignored if ignored else ''})")


def _ranker_name(cfg: DPOConfig, provider: RewardProvider | None) -> str:
    """The reward that ranks online samples (or stores pairs), as the user would name it."""
    if cfg.reward:
        return cfg.reward
    if provider is not None:
        return provider.name or type(provider).__name__
    from rewardhub.reward_resolution import reward_spec_of

    return reward_spec_of(cfg, DPO_FALLBACK_REWARD)


def _ignored(fmt: str | None, when: str = "") -> str:
    """``the completion/label columns are ignored``: the columns of ``fmt`` besides the prompt ("" if none)."""
    extra = [c for c in FORMATS.get(fmt or "", ()) if c != "prompt"]
    if not extra:
        return ""
    return f"the {'/'.join(extra)} column{'s are' if len(extra) > 1 else ' is'} {when}ignored"


def _not_pairs(data: str, fmt: str) -> str:
    """Why data in format ``fmt`` gives DPO no pairs, and the ways out."""
    message = f"--data {data} is in {describe_format(fmt)}: DPO needs pairs (prompt, chosen, rejected). "
    if "prompt" in FORMATS[fmt]:
        ignored = _ignored(fmt, "then ")
        message += ("Convert to pairs, or use --pairs online to sample and rank completions for these prompts"
                    + (f" ({ignored})" if ignored else ""))
    else:
        message += "Convert to pairs, or give prompts (a prompt column) to sample and rank with --pairs online"
    if fmt in ("prompt_completion", "messages", "text"):
        message += "; `rewardhub sft` trains on it as it is"
    return message


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
    """Sample ``num_generations`` completions per prompt, rank them, pair best vs worst.

    Returns (micro-batches, metrics, this step's :class:`RoundCounts` summed over every process). Sampling is
    seeded by (seed, step, process), so a resumed run draws the same completions.

    Raises:
        RewardProviderError: more than ``max_failure_rate`` of the step's rewards failed (all processes
            counted, so every process stops at the same step).
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
    ranking = rank_and_pair(ctx.provider, prompts, prompt_rows, completions, g, cfg.rank_with)
    counts = ranking.counts
    if world > 1:
        counts = RoundCounts(*(int(c) for c in accelerator.reduce(
            torch.tensor(list(counts), device=accelerator.device), "sum").tolist()))
    check_failure_rate(ctx.provider, counts.failed, counts.judged, cfg.max_failure_rate, step,
                       ranking.first_failure, _judgements(cfg))
    ctx.tally.first_failure = ctx.tally.first_failure or ranking.first_failure
    examples = []
    for prompt, chosen, rejected in ranking.pairs:
        p_ids = ctx.tokenizer(prompt, add_special_tokens=False).input_ids
        c_ids = encode_completion(ctx.tokenizer, chosen)
        r_ids = encode_completion(ctx.tokenizer, rejected)
        examples.append({"prompt": p_ids, "chosen": c_ids, "rejected": r_ids})
    per = max(1, -(-len(examples) // cfg.grad_accum))
    batches = [examples[i:i + per] for i in range(0, len(examples), per)]
    return batches, ranking.stats, counts


def _judgements(cfg: DPOConfig) -> str:
    return "samples" if cfg.rank_with == "score" else "comparisons"


class RoundCounts(NamedTuple):
    """What one online round formed and judged (one process's, or summed over all of them)."""

    pairs: int = 0  #: prompts that gave a pair
    prompts: int = 0
    tied: int = 0  #: prompts whose best and worst sample scored the same (or were the same text)
    starved: int = 0  #: prompts with fewer than two usable rewards
    failed: int = 0  #: failed judgements: samples (``score``) or comparisons (``compare``)
    judged: int = 0  #: judgements asked for


@dataclass
class Ranking:
    """The outcome of :func:`rank_and_pair`: the pairs, metrics, counts and the first failure's text."""

    pairs: list[tuple[str, str, str]]
    stats: dict[str, float]
    counts: RoundCounts
    first_failure: str | None = None


class OnlineTally:
    """Online DPO's totals since step 1: registered with ``accelerator.register_for_checkpointing``, so a
    resumed run still knows whether any pair was ever formed (and a converged policy whose samples all tie
    late in a run is not mistaken for one that never learned anything)."""

    def __init__(self) -> None:
        self.steps, self.counts, self.first_failure = 0, RoundCounts(), None

    def add(self, counts: RoundCounts) -> None:
        self.steps += 1
        self.counts = RoundCounts(*(a + b for a, b in zip(self.counts, counts)))

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "counts": list(self.counts), "first_failure": self.first_failure}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.counts = int(state["steps"]), RoundCounts(*state["counts"])
        self.first_failure = state.get("first_failure")


def check_pairs_formed(ctx: DPOState, step: int) -> None:
    """Stop a run whose first :data:`PAIRLESS_STEPS` steps (all of them, when the run is shorter) formed no pair.

    Such a run would save the initial model and exit 0 having learned nothing. One empty step is fine (a
    batch where every prompt tied); pairs formed early and ties later (a converged policy) are fine too. The
    totals are summed over every process, so every process decides the same.

    Raises:
        RewardProviderError: the rewards failed (each prompt had fewer than two usable ones).
        TrainingError: the samples tied (with the ways out: more or more varied samples, a finer reward).
    """
    tally, cfg = ctx.tally, ctx.cfg
    if tally.counts.pairs or tally.steps < min(PAIRLESS_STEPS, cfg.max_steps):
        return
    c = tally.counts
    reasons = []
    if c.tied:
        reasons.append(f"{c.tied} tied (their best and worst completions scored the same under "
                       f"{ctx.provider.display_name})")
    if c.starved:
        first = f"; first failure: {tally.first_failure}" if tally.first_failure else ""
        reasons.append(f"{c.starved} had fewer than two usable rewards (the provider failed on {c.failed} of "
                       f"{c.judged} {_judgements(cfg)}{first})")
    message = (f"online DPO formed no preference pair in steps 1-{step}: of {c.prompts} prompts "
               f"({cfg.num_generations} completions each), {' and '.join(reasons)}; there is nothing to train on")
    if not c.tied:
        raise RewardProviderError(f"{message}. Fix the reward source (timeouts, server, sandbox), or lower "
                                  "--max-failure-rate to stop at the first step with this many failures")
    raise TrainingError(
        f"{message}. Sample more, and more varied, completions (raise --num-generations, now "
        f"{cfg.num_generations}, or --temperature, now {cfg.temperature:g}), or rank with a reward that tells "
        "them apart (a graded score rather than pass/fail)")


def rank_and_pair(provider: RewardProvider, prompts: list[str], rows: list, completions: list[str], g: int,
                  rank_with: str = "score") -> Ranking:
    """Best-vs-worst pairs from ``g`` consecutive completions per prompt.

    ``rank_with="score"`` ranks by ``provider(samples)`` values (failed samples are left out);
    ``"compare"`` ranks by the sum of ``provider.compare(prompt, a, b)`` over a round robin (a failed
    comparison counts for neither). A prompt whose best and worst are tied (or identical text), or with fewer
    than two usable samples, gives no pair.
    """
    pairs, scores, failed, judged, starved, first = [], [], 0, 0, 0, None
    if rank_with == "score":
        samples = [Sample(prompts[i // g], completions[i], dict(rows[i // g])) for i in range(len(completions))]
        rewards = provider(samples)
        judged, first = len(rewards), first_failure(rewards)
        for j, prompt in enumerate(prompts):
            group = [(rewards[j * g + t].value, completions[j * g + t]) for t in range(g)
                     if rewards[j * g + t].usable]
            failed += g - len(group)
            starved += len(group) < 2
            scores += [v for v, _ in group]
            _pair_group(prompt, group, pairs)
    else:
        for j, prompt in enumerate(prompts):
            texts = completions[j * g:(j + 1) * g]
            wins = [0.0] * g
            broken = 0
            for a in range(g):
                for b in range(a + 1, g):
                    try:
                        p = float(provider.compare(prompt, texts[a], texts[b], dict(rows[j])))
                    except RewardProviderError as exc:
                        broken += 1
                        first = first or str(exc)
                        continue
                    wins[a] += p
                    wins[b] += 1.0 - p
            rounds = g * (g - 1) // 2
            judged, failed = judged + rounds, failed + broken
            if broken == rounds:  # nothing was judged: no ranking at all, not a tie
                starved += 1
                continue
            scores += wins
            _pair_group(prompt, list(zip(wins, texts)), pairs)
    skipped = len(prompts) - len(pairs)
    stats = {"online/pairs": float(len(pairs)), "online/skipped": float(skipped), "online/failed": float(failed)}
    if scores:
        stats["online/score_mean"] = statistics.fmean(scores)
        stats["online/score_std"] = statistics.pstdev(scores)
    stats.update({f"reward/{k}": v for k, v in provider.metrics().items()})
    counts = RoundCounts(len(pairs), len(prompts), skipped - starved, starved, failed, judged)
    return Ranking(pairs, stats, counts, first)


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
