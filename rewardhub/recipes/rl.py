"""On-policy RL against any reward provider: PPO (value head + GAE), GRPO and RLOO (critic-free).

One step, :func:`rl_step`, reads top to bottom (CleanRL's order)::

    sample G completions per prompt (GenerationBackend; log-probs at the sampling temperature)
    -> score them, once per batch (the reward provider) -> mask failed samples, stop past max_failure_rate
    -> old log-probs (+ values) and reference log-probs by a fresh eval-mode forward
    -> advantages: GAE on score - beta*KL per token (ppo) | group-relative (grpo) | leave-one-out (rloo)
    -> ppo_epochs x minibatches of the clipped loss (aggregated as loss_agg says), rows that cannot move the
       weights skipped; early stop past target_kl -> one LR-schedule step
    -> KL controller, metrics, completions table

The three algorithms share everything but the advantage function (and the value head, PPO only); the tensor
maths is in :mod:`rewardhub.maths.rl`. :func:`rewardhub.loop.run` drives the steps (logging, evaluation,
checkpoints). Exact resume: the checkpoint holds model/optimizer/scheduler/RNGs (accelerate) plus
:class:`RLCheckpoint` (KL coefficient, each process's sampling generator), and the data order and minibatch
shuffles are pure functions of (seed, step), so an interrupted and resumed run gives the same weights as an
uninterrupted one. With ``async_rollouts`` the sampling is served one step ahead by
:class:`rewardhub.rollout_pipeline.RolloutPipeline` (bounded staleness; the PPO ratio against the behaviour log-probs).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rewardhub.config import RLConfig
from rewardhub.data import load_rows, render_prompt, require_columns
from rewardhub.engine import DataOrder, clip_and_step, make_optimizer, save_final_model, step_schedule
from rewardhub.errors import ConfigError
from rewardhub.evaluation import load_eval_rows, score_greedy
from rewardhub.generation import GenerationBackend, Rollout, SamplingParams, sync_backend_weights
from rewardhub.generation_server import backend_for, logprob_metrics, sampler_logprobs_usable
from rewardhub.logprobs import sequence_logprobs
from rewardhub.loop import Callback, Outcome, run
from rewardhub.maths.choices import RL_ALGOS
from rewardhub.maths.rl import (
    AdaptiveKLController,
    FixedKLController,
    adjusted_scores,
    aggregate,
    explained_variance,
    gae,
    grpo_advantages,
    kl_penalty,
    loss_token_weights,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    token_kl,
    token_level_rewards,
)
from rewardhub.maths.value_head import ActorCritic, ValueHead, hidden_size_of
from rewardhub.models import LoraOptions, check_lengths_fit, disable_dropout, load_model, load_tokenizer
from rewardhub.reward_resolution import build_reward, reward_spec_of, summarize
from rewardhub.rewards import Reward, RewardProvider, Sample, Status, check_failure_rate, first_failure
from rewardhub.rollout_pipeline import RolloutPipeline

log = logging.getLogger(__name__)
#: --reward when neither the flag nor the task names one
RL_FALLBACK_REWARD = "verifier"


class RLCheckpoint:
    """What RL adds to accelerate's checkpoint: the KL coefficient and every process's sampling RNG.

    Registered with ``accelerator.register_for_checkpointing``, so it is written inside the checkpoint
    directory before ``trainer_state.json`` (a half-written checkpoint is never resumed).
    """

    def __init__(self, kl_ctl, generator: torch.Generator, process_index: int):
        self.kl_ctl, self.generator, self.rank = kl_ctl, generator, process_index

    def state_dict(self) -> dict[str, Any]:
        from accelerate.utils import gather_object

        mine = base64.b64encode(bytes(self.generator.get_state().tolist())).decode()
        return {"kl_coef": self.kl_ctl.value, "generators": gather_object([mine])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kl_ctl.value = float(state["kl_coef"])
        raw = base64.b64decode(state["generators"][self.rank])
        self.generator.set_state(torch.tensor(list(raw), dtype=torch.uint8))


@dataclass
class RLState:
    """Everything an RL step needs, built once by :func:`setup`."""

    cfg: RLConfig
    accelerator: Any
    tokenizer: Any
    model: Any  # the prepared ActorCritic
    ref: Any  # reference model, "adapter" (LoRA-disabled base) or None
    optimizer: Any
    scheduler: Any
    provider: RewardProvider
    backend: GenerationBackend
    rows: Any
    eval_rows: Any
    order: DataOrder
    params: SamplingParams
    eos_ids: list[int]
    resumable: RLCheckpoint
    losses: LossSettings
    weights_version: int | None = None  # the optimizer steps of the weights the backend samples from
    pipeline: RolloutPipeline | None = None  # --async-rollouts: samples each step's rollout one step ahead

    @property
    def net(self) -> ActorCritic:
        return self.accelerator.unwrap_model(self.model)


def train_rl(cfg: RLConfig, callbacks: Sequence[Callback] = (), provider: RewardProvider | None = None,
             backend: GenerationBackend | None = None) -> dict[str, Any]:
    """Run PPO, GRPO or RLOO (``cfg.algo``) against the reward provider; returns final metrics.

    Args:
        cfg: the configuration (validated here).
        callbacks: called as ``cb(step, metrics)`` after every step (tests use it to interrupt a run).
        provider: a ready provider; default: built from ``cfg.reward`` / ``cfg.reward_args`` (and closed here).
        backend: the rollout backend; default: a :class:`~rewardhub.generation_server.ServerBackend` when
            ``cfg.generation_server`` is set, else :class:`~rewardhub.generation.TorchBackend`.
    """
    cfg.validate()
    check_lengths_fit(cfg)  # from the model's config: before any data or weights load
    if cfg.algo not in RL_ALGOS:
        raise ConfigError(f"train_rl runs {', '.join(RL_ALGOS)}; got algo {cfg.algo!r}")
    own = provider is None
    provider = provider if provider is not None else build_reward(reward_spec_of(cfg, RL_FALLBACK_REWARD),
                                                                  cfg.reward_args)
    own_backend = backend is None
    backend = backend if backend is not None else backend_for(cfg)
    recipe = RL(cfg, provider, backend)
    try:
        return run(recipe, cfg, callbacks)
    finally:
        recipe.close()
        if own:
            provider.close()
        if own_backend and hasattr(backend, "close"):
            backend.close()


class RL:
    """The RL recipe for :func:`rewardhub.loop.run`: held-out reward before and after, as ``before/`` and ``after/``."""

    eval_before = True

    def __init__(self, cfg: RLConfig, provider: RewardProvider, backend: GenerationBackend):
        self.cfg, self.provider, self.backend = cfg, provider, backend
        self.label = cfg.algo
        self.pipeline: RolloutPipeline | None = None

    def setup(self, accelerator) -> RLState:
        state = setup(self.cfg, self.provider, self.backend, accelerator)
        self.pipeline = state.pipeline
        return state

    def close(self) -> None:
        """Stop the rollout worker (--async-rollouts), however the run ended."""
        if self.pipeline is not None:
            self.pipeline.close()

    def step(self, state: RLState, step: int) -> dict[str, float]:
        return rl_step(state, step)

    def evaluate(self, state: RLState) -> dict[str, float] | None:
        return evaluate_rl(state) if state.eval_rows is not None else None

    def finish(self, state: RLState, outcome: Outcome) -> dict[str, Any]:
        return {**{f"before/{k}": v for k, v in outcome.before.items()},
                **{f"after/{k}": v for k, v in outcome.after.items()},
                "steps": outcome.steps, "model_path": str(save_model(state))}


def setup(cfg: RLConfig, provider: RewardProvider, backend: GenerationBackend, accelerator=None) -> RLState:
    """Load data and models, build optimizer and state, prepare with accelerate (a new accelerator if none)."""
    from rewardhub.engine import make_accelerator

    accelerator = accelerator if accelerator is not None else make_accelerator(cfg)
    rows = load_rows(cfg.data, "train", cfg.data_args, cfg.column_map)
    require_columns(rows, ["prompt"], "RL training (prompts to sample from)", non_empty=True)
    eval_rows = load_eval_rows(cfg.data, cfg.eval_data, cfg.data_args, cfg.column_map, cfg.eval_size)
    if eval_rows is not None and "prompt" not in eval_rows.column_names:
        eval_rows = None
    tokenizer = load_tokenizer(cfg.model, cfg.chat_template)
    net, ref = build_models(cfg, tokenizer)
    own_lr = None
    if net.value_head is not None and cfg.value_lr_mult != 1.0:
        own_lr = (list(net.value_head.parameters()), cfg.lr * cfg.value_lr_mult)
    optimizer, scheduler = make_optimizer(net, cfg, accelerator.num_processes, own_lr)
    model, optimizer, scheduler = accelerator.prepare(net, optimizer, scheduler)
    if isinstance(ref, torch.nn.Module):
        ref.to(accelerator.device)
    if cfg.adaptive_kl:
        kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    else:
        kl_ctl = FixedKLController(cfg.kl_coef)
    generator = torch.Generator(device=accelerator.device).manual_seed(cfg.seed * 7919 + accelerator.process_index)
    resumable = RLCheckpoint(kl_ctl, generator, accelerator.process_index)
    accelerator.register_for_checkpointing(resumable)
    params = SamplingParams(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k)
    losses = LossSettings(cfg.clip_eps, cfg.clip_eps_high, cfg.vf_coef, cfg.clip_value, cfg.kl_loss_coef)
    eos_ids = eos_ids_of(tokenizer, net.policy)
    pipeline = None
    if cfg.async_rollouts:  # registered after resumable: its sampling-RNG state wins on load
        pipeline = RolloutPipeline(backend, net.policy, params, eos_ids, tokenizer.pad_token_id, generator,
                                   cfg.max_staleness, cfg.max_steps, accelerator.process_index)
        accelerator.register_for_checkpointing(pipeline)
    return RLState(cfg, accelerator, tokenizer, model, ref, optimizer, scheduler, provider, backend, rows, eval_rows,
                   DataOrder(len(rows), cfg.seed), params, eos_ids, resumable, losses, pipeline=pipeline)


def build_models(cfg: RLConfig, tokenizer) -> tuple[ActorCritic, Any]:
    """Policy (+ value head / separate critic for PPO) and the frozen reference, all with dropout off."""
    lora = LoraOptions.of(cfg)
    policy = load_model(cfg.model, dtype=cfg.dtype, gradient_checkpointing=cfg.gradient_checkpointing, lora=lora,
                        tokenizer=tokenizer)
    disable_dropout(policy)
    head = critic = None
    if cfg.algo == "ppo":
        if cfg.critic == "separate":
            # The trunk only (no LM head): every critic parameter gets a gradient (DDP needs no unused ones).
            critic = load_model(cfg.model, dtype=cfg.dtype, gradient_checkpointing=cfg.gradient_checkpointing,
                                tokenizer=tokenizer).base_model
            disable_dropout(critic)
        head = ValueHead(hidden_size_of(critic if critic is not None else policy))
    ref = None
    if (cfg.kl_in_reward and cfg.kl_coef > 0) or cfg.kl_loss_coef > 0 or cfg.adaptive_kl:
        if cfg.lora_r > 0:
            ref = "adapter"  # the policy with its adapter disabled: the unchanged base
        else:
            ref = load_model(cfg.model, dtype=cfg.dtype, tokenizer=tokenizer)
            disable_dropout(ref)
            ref.eval().requires_grad_(False)
    return ActorCritic(policy, head, critic), ref


def eos_ids_of(tokenizer, model) -> list[int]:
    """The tokenizer's EOS plus the model's generation-config EOS ids (end-of-turn tokens), minus pad."""
    ids = [int(tokenizer.eos_token_id)]
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for i in [extra] if isinstance(extra, int) else (extra or []):
        if i not in ids and i != tokenizer.pad_token_id:
            ids.append(int(i))
    return ids


def rl_step(state: RLState, step: int) -> dict[str, float]:
    """One full step: sample, score, mask failures, advantages, update. Its metrics (all processes agree)."""
    cfg, acc = state.cfg, state.accelerator
    t0 = time.perf_counter()
    # the backend samples from the weights of step - 1 (a no-op when it does); pipelined, the pipeline syncs
    sync_s = sync_weights(state, step - 1) if state.pipeline is None else 0.0
    # 1. sample G completions per prompt
    rows, prompts, rollout = sample_rollout(state, step)
    completions = decode(state.tokenizer, rollout)
    t1 = time.perf_counter()
    pipelined = state.pipeline.metrics(state.pipeline.last) if state.pipeline is not None else {}
    # 2. score them, once per batch
    ids = [row[:n] for row, n in zip(rollout.completion_ids.tolist(), rollout.completion_lengths.tolist())]
    rewards = state.provider([Sample(p, c, r, i) for p, c, r, i in zip(prompts, completions, rows, ids)])
    t2 = time.perf_counter()
    # 3. mask failed samples out of everything below; stop when too many failed
    valid = torch.tensor([r.usable for r in rewards], device=acc.device)
    check_failures(state, rewards, valid, step)
    # 4. old log-probs (+ values), reference log-probs, then advantages
    old_lp, values, ref_lp = rollout_forward(state, rollout)
    gen_stats = logprob_metrics(rollout, old_lp, policy_pass_needed(state, rollout))
    batch = RolloutBatch(rollout.input_ids, rollout.attention_mask, rollout.position_ids, rollout.prompt_length,
                         rollout.completion_mask, valid, old_lp, ref_lp, values)
    raw = torch.tensor([r.value for r in rewards], device=acc.device)
    scores = adjusted_scores(raw, rollout.eos_reached, valid, cfg.missing_eos_penalty)
    kl_tok = token_kl(old_lp, ref_lp, batch.mask, cfg.kl_estimator)
    beta = state.resumable.kl_ctl.value if cfg.kl_in_reward else 0.0
    if cfg.algo == "ppo":
        batch.advantages, batch.returns, _ = ppo_advantages(batch, scores, kl_tok, beta, cfg.gamma, cfg.lam,
                                                            cfg.whiten_rewards, cfg.whiten_advantages)
    else:
        batch.advantages, _ = group_advantages(cfg.algo, batch, scores, kl_tok, beta, cfg.generations,
                                               cfg.scale_rewards, cfg.whiten_rewards)
    t3 = time.perf_counter()
    # 5. ppo_epochs x minibatches of the clipped loss, then one LR-schedule step
    train_stats = update(state, batch, step)
    if state.pipeline is not None:
        state.pipeline.done(step)  # the pipeline refreshes the sampler's weights (and a server's) on its schedule
    else:
        sync_s += sync_weights(state, step)
    t4 = time.perf_counter()
    # 6. the KL controller, metrics and the completions table
    n_valid = valid.sum().clamp_min(1)
    kl_seq = float(_reduce(state, ((kl_tok * batch.train_mask).sum(1) * valid).sum() / n_valid))
    state.resumable.kl_ctl.update(kl_seq, len(batch) * acc.num_processes)
    n_tokens = float(_reduce(state, rollout.completion_mask.sum().float(), "sum"))
    kl = {"kl/mean_per_seq": kl_seq, "kl/coef": state.resumable.kl_ctl.value} if state.ref is not None else {}
    metrics = {**reward_metrics(state, rewards, scores, valid), **kl, **train_stats, **gen_stats,
               "completions/mean_length": float(_reduce(state, rollout.completion_lengths.float().mean())),
               "completions/eos_rate": float(_reduce(state, rollout.eos_reached.float().mean())),
               "lr": state.scheduler.get_last_lr()[0], "time/step": t4 - t0, "time/generation": t1 - t0,
               "time/scoring": t2 - t1, "time/forward": t3 - t2, "time/update": t4 - t3, "time/weight_sync": sync_s,
               "time/tokens_per_s": n_tokens / max(pipelined.get("time/generation_worker", t1 - t0), 1e-9),
               **pipelined}
    if batch.old_values is not None:
        m = batch.train_mask
        metrics["value/mean"] = float(_reduce(state, masked_mean(batch.old_values, m)))
        if bool(m.any()):
            metrics["value/explained_variance"] = float(explained_variance(batch.old_values, batch.returns, m))
    metrics.update({f"provider/{k}": v for k, v in state.provider.metrics().items()})
    if cfg.completions_every and step % cfg.completions_every == 0 and acc.is_main_process:
        seq_adv = batch.advantages if batch.advantages.dim() == 1 else masked_mean(batch.advantages,
                                                                                    batch.train_mask, 1)
        write_completions(Path(cfg.out) / "completions" / f"step_{step:05d}.jsonl", prompts, completions,
                          rewards, seq_adv, rollout.eos_reached)
    return metrics


def sample_rollout(state: RLState, step: int) -> tuple[list[dict], list[str], Rollout]:
    """This process's prompts for ``step`` (each repeated ``generations`` times, consecutively), completions.

    With ``async_rollouts`` the pipeline hands over the rollout it sampled ahead (and starts the next one).
    """
    rows, texts, ids = step_prompts(state, step)
    if state.pipeline is not None:
        return rows, texts, state.pipeline.take(step, lambda n: step_prompts(state, n)[2]).rollout
    rollout = state.backend.generate(state.net.policy, ids, state.params, eos_token_id=state.eos_ids,
                                   pad_token_id=state.tokenizer.pad_token_id, generator=state.resumable.generator)
    return rows, texts, rollout


def step_prompts(state: RLState, step: int) -> tuple[list[dict], list[str], list[list[int]]]:
    """This process's rows, prompt texts and prompt token ids for ``step``: a pure function of (seed, step)."""
    cfg, acc, tok = state.cfg, state.accelerator, state.tokenizer
    indices = state.order.batch(step - 1, cfg.batch_size * acc.num_processes)
    with acc.split_between_processes(indices) as mine:
        rows = [dict(state.rows[i]) for i in mine]
    texts = [render_prompt(r["prompt"], tok) for r in rows]
    keep = max(1, cfg.max_length - cfg.max_new_tokens)
    ids = [p[-keep:] for p in tok(texts, add_special_tokens=False)["input_ids"]]
    rows, texts, ids = ([x for x in xs for _ in range(cfg.generations)] for xs in (rows, texts, ids))
    return rows, texts, ids


def decode(tokenizer, rollout: Rollout) -> list[str]:
    """Completion texts up to (excluding) EOS, without special tokens."""
    lengths = (rollout.completion_lengths - rollout.eos_reached.long()).tolist()
    return [tokenizer.decode(row[:n], skip_special_tokens=True)
            for row, n in zip(rollout.completion_ids.tolist(), lengths)]


def check_failures(state: RLState, rewards: list[Reward], valid: torch.Tensor, step: int) -> None:
    """Stop with a clear message when the share of failed rewards (all processes) exceeds the threshold."""
    failed = float(_reduce(state, (~valid).sum().float(), "sum"))
    total = float(_reduce(state, torch.tensor(float(len(valid)), device=valid.device), "sum"))
    check_failure_rate(state.provider, int(failed), int(total), state.cfg.max_failure_rate, step,
                       first_failure(rewards))


@torch.no_grad()
def rollout_forward(state: RLState, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Old log-probs (+ values) and reference log-probs by fresh eval-mode passes with generation positions.

    The policy pass is skipped when nothing needs it: without a value head, and unless
    ``recompute_logprobs`` asks for it, the sampler's log-probs *are* the old log-probs (the same model, the
    same positions, the same temperature; tested equal to a fresh pass). That saves a full forward per step.
    A backend whose log-probs follow another convention (a vLLM server) or that left some out (NaN) gets the
    pass anyway (:func:`policy_pass_needed`). With ``async_rollouts`` the sampler's log-probs are the old
    log-probs always (values still come from the pass): the rollout came from older weights, and the PPO ratio
    must be against that behaviour policy; a pipelined backend whose log-probs cannot serve is refused.
    """
    net, cfg = state.net, state.cfg
    temperature = state.params.logprob_temperature
    start = rollout.prompt_length
    chunk = max(1, math.ceil((cfg.minibatch_size or len(rollout)) / cfg.grad_accum))
    policy_pass = policy_pass_needed(state, rollout)
    if state.pipeline is not None and not sampler_logprobs_usable(state.backend, rollout):
        raise ConfigError("async_rollouts needs the sampler's own log-probs (the behaviour policy's), and this "
                          "generation server's cannot serve (another convention, or missing); use rewardhub serve, "
                          "or vLLM with --logprobs-mode processed_logprobs and generation_logprobs=server, or drop "
                          "--async-rollouts")
    was_training = net.training
    net.eval()
    old, values, ref = [], [], []
    try:
        for first in range(0, len(rollout), chunk):
            rows = slice(first, first + chunk)
            ids, mask, pos = rollout.input_ids[rows], rollout.attention_mask[rows], rollout.position_ids[rows]
            if policy_pass:
                logprobs, value, _ = net(ids, mask, pos, start, temperature)
                if state.pipeline is not None:
                    logprobs = rollout.logprobs[rows]
            else:
                logprobs, value = rollout.logprobs[rows], None
            old.append(logprobs)
            values.append(value)
            if state.ref == "adapter":
                with net.policy.disable_adapter():
                    ref.append(sequence_logprobs(net.policy, ids, mask, start, temperature, pos))
            elif state.ref is not None:
                ref.append(sequence_logprobs(state.ref, ids, mask, start, temperature, pos))
    finally:
        net.train(was_training)
    cm = rollout.completion_mask.float()
    old_lp = torch.cat(old) * cm
    vals = torch.cat(values) * cm if values[0] is not None else None
    return old_lp, vals, (torch.cat(ref) * cm if ref else None)


def policy_pass_needed(state: RLState, rollout: Rollout) -> bool:
    """Whether the old log-probs need a policy forward pass: a value head, ``recompute_logprobs``, or sampler
    log-probs that cannot serve (a server with another convention, or missing ones)."""
    return state.net.has_values or state.cfg.recompute_logprobs or not sampler_logprobs_usable(state.backend, rollout)


def sync_weights(state: RLState, version: int) -> float:
    """Send the policy's weights (``version`` optimizer steps) to the backend, from the main process; seconds taken.

    A version the backend already holds is skipped, so the call before a step's rollout only sends weights at
    the start of a run (or of a resumed one).
    """
    if state.weights_version == version:
        return 0.0
    t0 = time.perf_counter()
    if state.accelerator.is_main_process:
        sync_backend_weights(state.backend, state.net.policy, version)
    state.accelerator.wait_for_everyone()
    state.weights_version = version
    return time.perf_counter() - t0


@dataclass
class RolloutBatch:
    """N sequences (prompt + completion) with what the update needs. T = completion width.

    Attributes:
        input_ids, attention_mask, position_ids: (N, P + T) as generated (left-padded prompts).
        completion_start: P.
        mask: (N, T) 1 on completion tokens up to and including EOS.
        valid: (N,) False where the reward source failed: masked out of the update.
        old_logprobs: (N, T) log-probs by a fresh eval-mode forward pass at rollout time.
        ref_logprobs: (N, T) under the reference model, or None when no KL term is used.
        old_values: (N, T) value-head outputs at rollout time (PPO), else None.
        advantages: (N, T) per token (PPO) or (N,) per sequence (GRPO/RLOO).
        returns: (N, T) value targets (PPO), else None.
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    completion_start: int
    mask: Tensor
    valid: Tensor
    old_logprobs: Tensor
    ref_logprobs: Tensor | None = None
    old_values: Tensor | None = None
    advantages: Tensor | None = None
    returns: Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def train_mask(self) -> Tensor:
        """(N, T) bool: real completion tokens of samples with a usable reward."""
        return self.mask.bool() & self.valid.bool()[:, None]

    def select(self, index: Tensor) -> RolloutBatch:
        """The rows ``index`` of every tensor (a minibatch)."""
        picked = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in picked.items():
            if isinstance(value, Tensor):
                picked[name] = value[index]
        return replace(self, **picked)


def ppo_advantages(batch: RolloutBatch, scores: Tensor, kl: Tensor, kl_coef: float, gamma: float, lam: float,
                   whiten_rewards: bool = False, whiten_advantages: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token rewards, then GAE against the rollout-time values.

    Returns:
        ``(advantages, returns, rewards)``, each (N, T) and 0 outside ``batch.train_mask``.
    """
    m = batch.train_mask
    rewards = token_level_rewards(scores, kl, batch.mask, kl_coef)  # placement needs every row's last token
    rewards = torch.where(m, rewards, torch.zeros_like(rewards))
    if whiten_rewards:
        rewards = _whiten(rewards, m, shift_mean=False)
    advantages, returns = gae(rewards, batch.old_values, m, gamma=gamma, lam=lam)
    if whiten_advantages:
        advantages = _whiten(advantages, m, shift_mean=True)
    return advantages, returns, rewards


def group_advantages(algo: str, batch: RolloutBatch, scores: Tensor, kl: Tensor, kl_coef: float, group_size: int,
                     scale_rewards: bool = True, whiten_rewards: bool = False) -> tuple[Tensor, Tensor]:
    """GRPO / RLOO advantages, one per sequence; failed samples are left out of their group.

    Returns:
        ``(advantages (N,), sequence rewards (N,))``; the reward is ``score - kl_coef * sum_t kl_t``.
    """
    valid = batch.valid.bool()
    rewards = scores - kl_coef * (kl * batch.mask).sum(dim=1)
    rewards = torch.where(valid, rewards, torch.zeros_like(rewards))
    if whiten_rewards:
        rewards = _whiten(rewards, valid, shift_mean=False)
    if algo == "grpo":
        adv = grpo_advantages(rewards, group_size, scale_by_std=scale_rewards, valid=valid)
    elif algo == "rloo":
        adv = rloo_advantages(rewards, group_size, valid=valid)
    else:
        raise ValueError(f"no group advantage estimator for algo {algo!r}")
    return adv, rewards


def _whiten(x: Tensor, mask: Tensor, shift_mean: bool) -> Tensor:
    """:func:`masked_whiten`, but a no-op (instead of an error) with fewer than two masked entries."""
    if int(mask.bool().sum()) < 2:
        return torch.where(mask.bool(), x, torch.zeros_like(x))
    return masked_whiten(x, mask, shift_mean=shift_mean)


def update(state: RLState, batch: RolloutBatch, step: int) -> dict[str, float]:
    """``ppo_epochs`` passes of shuffled minibatches; stops early past ``target_kl``; one LR-schedule step."""
    cfg = state.cfg
    n = len(batch)
    size = min(cfg.minibatch_size or n, n)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    count, epochs = 0, 0
    state.model.train()
    stop = False
    for epoch in range(cfg.ppo_epochs):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 101 + epoch)
        perm = torch.randperm(n, generator=g).to(batch.input_ids.device)
        for s in range(0, n, size):
            stats = minibatch_step(state, batch.select(perm[s:s + size]), with_entropy=epoch == 0)
            if stats is None:
                continue
            count += 1
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            if cfg.target_kl is not None and stats.get("policy/approx_kl", 0.0) > cfg.target_kl:
                stop = True
                break
        epochs = epoch + 1
        if stop:
            break
    step_schedule(state.scheduler)
    out = {k: v / counts[k] for k, v in sums.items()}  # a key a minibatch did not measure is not averaged in
    out.update({"update/epochs": float(epochs), "update/early_stopped": float(stop), "update/minibatches": count})
    return out


def minibatch_step(state: RLState, mb: RolloutBatch, with_entropy: bool) -> dict[str, float] | None:
    """One optimizer step on a minibatch, split in ``grad_accum`` chunks; the loss aggregated as ``loss_agg`` says.

    With ``skip_zero_advantage`` the rows that cannot carry gradient (:func:`rows_with_gradient`) are left
    out of the forward and backward passes; the loss weights (:func:`loss_token_weights`) keep the whole
    minibatch's normalisers, so the gradient is the same as without skipping (up to float summation order). A chunk left
    empty keeps one row (its loss is exactly 0): every process still runs a backward pass, which DDP's
    gradient all-reduce needs, and the optimizer still steps on (zero) gradients as it would have, so
    AdamW's momentum and the LR schedule are unchanged. The policy statistics (clip fraction, approx KL,
    entropy) are then over the rows that were state. When no process has a row that can move the weights,
    not even that row runs: :func:`_step_on_zero_gradient`.

    Returns None (no step) when no process has a usable token in the minibatch.
    """
    acc, cfg = state.accelerator, state.cfg
    world = acc.num_processes
    m = mb.train_mask
    total, n_seqs = _reduce(state, torch.stack([m.sum(), m.any(dim=1).sum()]).float(), "sum").tolist()
    if total == 0:
        return None
    weights = loss_token_weights(m, cfg.loss_agg, total, n_seqs, cfg.max_new_tokens)  # whole-minibatch normalisers
    rows = torch.arange(len(mb), device=mb.input_ids.device)
    chunks = [c for c in rows.chunk(cfg.grad_accum) if len(c)]
    if cfg.skip_zero_advantage:
        live = rows_with_gradient(mb, state.losses, state.net.has_values)
        if _grads_settable(acc) and float(_reduce(state, live.sum().float(), "sum")) == 0:
            return _step_on_zero_gradient(state)
        chunks = [c[live[c]] if bool(live[c].any()) else c[:1] for c in chunks]
    subs = [(mb.select(idx), weights[idx]) for idx in chunks]
    run_rows = sum(len(sub) for sub, _ in subs)
    stats_total = float(_reduce(state, sum(sub.train_mask.sum() for sub, _ in subs).float(), "sum"))
    sums: dict[str, float] = {"update/frac_rows_skipped": (1 - run_rows / len(mb)) / world}
    for k, (sub, sub_weights) in enumerate(subs):
        n_tok = float(sub.train_mask.sum())
        ctx = contextlib.nullcontext() if k == len(subs) - 1 else acc.no_sync(state.model)
        with ctx:
            logp, values, entropy = state.model(sub.input_ids, sub.attention_mask, sub.position_ids,
                                              sub.completion_start, state.params.logprob_temperature, with_entropy)
            loss, stats = rl_loss(logp, values, sub, state.losses, sub_weights)
            acc.backward(loss * world)  # DDP averages over processes
        if entropy is not None:
            stats["policy/entropy"] = masked_mean(entropy, sub.train_mask)
        for name, v in stats.items():
            sums[name] = sums.get(name, 0.0) + float(v) * n_tok / max(stats_total, 1.0)
    grad_norm = clip_and_step(acc, state.model, state.optimizer, cfg.max_grad_norm)  # the schedule steps per rollout
    names = sorted(sums)
    reduced = _reduce(state, torch.tensor([sums[k] for k in names], device=acc.device), "sum").tolist()
    return {**dict(zip(names, reduced)), "update/grad_norm": grad_norm}


def rows_with_gradient(mb: RolloutBatch, losses: LossSettings, has_values: bool) -> Tensor:
    """(n,) bool: the rows whose terms in :func:`rl_loss` can move the weights; the update may skip the rest.

    A row without a usable token (failed reward, empty completion) is masked out of every term. Without a
    value loss and without a KL loss term, a row whose advantages are all exactly zero (a GRPO/RLOO group
    whose samples all scored the same) contributes ``max(-0 * r, -0 * clip(r)) = 0`` per token for *any*
    ratio ``r``, so its gradient is exactly zero in every epoch. Such rows are common in verifier-scored RL
    (all-wrong groups early, all-right ones late; DAPO's "zero-variance groups"), and their forward and
    backward passes are pure waste. Dropping them changes nothing else because :func:`minibatch_step` (just
    above) computes the loss weights over the whole minibatch before it drops any row.
    """
    live = mb.train_mask.any(dim=1)
    if has_values or (losses.kl_loss_coef > 0 and mb.ref_logprobs is not None):
        return live
    adv = mb.advantages
    if adv is None:
        return live
    if adv.dim() == 1:
        return live & (adv != 0)
    return (mb.train_mask & (adv != 0)).any(dim=1)


@dataclass
class LossSettings:
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    vf_coef: float = 0.1
    clip_value: float | None = 0.2
    kl_loss_coef: float = 0.0


def rl_loss(logprobs: Tensor, values: Tensor | None, mb: RolloutBatch, losses: LossSettings,
            token_weights: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped policy loss (+ ``vf_coef`` x clipped value loss, + ``kl_loss_coef`` x k3 KL).

    Args:
        logprobs: (n, T) current log-probs of ``mb``'s completion tokens (with grad).
        values: (n, T) current values (with grad), or None without a critic.
        mb: the minibatch (advantages, old log-probs/values, returns, masks).
        losses: coefficients and clip ranges.
        token_weights: (n, T) from :func:`loss_token_weights`: every term is then ``sum(weights * loss)``;
            ``None``: every term is the token-mean over ``mb``.

    Returns:
        ``(loss, stats)``; stats are detached token-means (whatever the weights). Rows with ``valid = False``
        get no gradient.
    """
    m = mb.train_mask
    adv = mb.advantages
    adv = torch.where(mb.valid.bool() if adv.dim() == 1 else m, adv, torch.zeros_like(adv))
    loss, pstats = ppo_policy_loss(logprobs, mb.old_logprobs, adv, m, losses.clip_eps, losses.clip_eps_high,
                                   token_weights)
    stats = {"policy/loss": pstats["loss_token_mean"], "policy/clipfrac": pstats["clipfrac"],
             "policy/approx_kl": pstats["approx_kl"], "policy/ratio_mean": pstats["ratio_mean"]}
    if values is not None and mb.returns is not None:
        vloss, vstats = ppo_value_loss(values, mb.old_values, mb.returns, m, losses.clip_value, token_weights)
        loss = loss + losses.vf_coef * vloss
        stats.update({"value/loss": vstats["loss_token_mean"], "value/clipfrac": vstats["value_clipfrac"]})
    if losses.kl_loss_coef > 0 and mb.ref_logprobs is not None:
        kl_tok = kl_penalty(logprobs, mb.ref_logprobs, "k3", mask=m)
        loss = loss + losses.kl_loss_coef * aggregate(kl_tok, m, token_weights)
        stats["kl/loss_term"] = masked_mean(kl_tok.detach(), m)
    return loss, stats


def _grads_settable(acc) -> bool:
    """Whether gradients may be written directly: a plain or DDP-wrapped module (FSDP and DeepSpeed shard them)."""
    from accelerate.utils import DistributedType

    return acc.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.XLA,
                                        DistributedType.MEGATRON_LM)


def _step_on_zero_gradient(state: RLState) -> dict[str, float]:
    """No row on any process can move the weights: zero gradients without a forward or backward pass.

    The optimizer still steps, as it would have on the zero gradients a backward pass would produce (AdamW's
    momentum keeps moving the weights), so the run is unchanged; only the policy loss (exactly 0) is known.
    Every trainable parameter of a causal LM is in the loss's graph, so a backward pass would have given each
    one a (zero) gradient too. Every process takes this branch together (the live-row count is all-reduced).
    """
    for p in state.model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    grad_norm = clip_and_step(state.accelerator, state.model, state.optimizer, state.cfg.max_grad_norm)
    return {"policy/loss": 0.0, "update/frac_rows_skipped": 1.0, "update/grad_norm": grad_norm}


def reward_metrics(state: RLState, rewards: list[Reward], scores: Tensor, valid: Tensor) -> dict[str, float]:
    """Reward mean/std (all processes), per-component mean/std (this process), status shares and counts."""
    acc = state.accelerator
    values = acc.gather(torch.tensor([r.value for r in rewards], device=acc.device))
    ok = acc.gather(valid)
    codes = acc.gather(torch.tensor([list(Status).index(r.status) for r in rewards], device=acc.device))
    out: dict[str, float] = {}
    if bool(ok.any()):
        usable = values[ok]
        out["reward/mean"] = float(usable.mean())
        out["reward/std"] = float(usable.std(unbiased=False))
        out["reward/score_mean"] = float(acc.gather(scores)[ok].mean())  # after missing_eos_penalty
    for i, status in enumerate(Status):
        out[f"reward/frac_{status.value}"] = float((codes == i).float().mean())
    out["reward/failed"] = float((~ok).sum())
    local = summarize(rewards)
    out.update({f"reward/{k}": v for k, v in local.items() if k.endswith(("/mean", "/std"))})
    return out


@torch.no_grad()
def evaluate_rl(state: RLState) -> dict[str, float]:
    """Greedy completions of the held-out prompts, scored by the provider: mean reward (and accuracy)."""
    cfg = state.cfg
    return score_greedy(state.net.policy, state.tokenizer, state.eval_rows, state.provider, cfg.max_new_tokens,
                        batch_size=max(cfg.batch_size * cfg.generations, 8), seed=cfg.seed)


def save_model(state: RLState) -> Path:
    """``out/model`` as a plain HF checkpoint; PPO's value head beside it in ``value_head.pt``."""
    acc, net = state.accelerator, state.net
    path = save_final_model(acc, net.policy, state.tokenizer, state.cfg.out, state.cfg.merge_lora)
    if net.value_head is not None and acc.is_main_process:
        torch.save(net.value_head.state_dict(), path / "value_head.pt")
        if net.critic is not None:
            net.critic.save_pretrained(Path(state.cfg.out) / "critic")
    acc.wait_for_everyone()
    return path


def write_completions(path: Path, prompts: list[str], completions: list[str], rewards: list[Reward],
                      advantages: torch.Tensor, eos: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for p, c, r, a, e in zip(prompts, completions, rewards, advantages.tolist(), eos.tolist()):
            f.write(json.dumps({"prompt": p, "completion": c, "reward": r.value, "status": r.status.value,
                                "detail": r.detail, "advantage": a, "eos": e, "parts": dict(r.parts)},
                               ensure_ascii=False) + "\n")


def _reduce(state: RLState, x: torch.Tensor, op: str = "mean") -> torch.Tensor:
    if state.accelerator.num_processes == 1:
        return x
    return state.accelerator.reduce(x.to(state.accelerator.device), op)
