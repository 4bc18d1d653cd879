"""On-policy RL against any reward provider: PPO (value head + GAE), GRPO and RLOO (critic-free).

Read top to bottom; one step is::

    prompts (DataOrder) -> sample G completions each (GenerationBackend, log-probs at the sampling temperature)
    -> Samples -> provider(samples), once per batch -> mask failed samples, stop past max_failure_rate
    -> fresh eval-mode forward: old log-probs (+ values), reference log-probs
    -> advantages: GAE on score - beta*KL per token (ppo) | group-relative (grpo) | leave-one-out (rloo)
    -> ppo_epochs x minibatches of the clipped loss (token-mean), early stop on target_kl -> LR schedule step
    -> metrics, completions table, checkpoint

The three algorithms share everything but the advantage function (and the value head, PPO only). Exact
resume: the checkpoint holds model/optimizer/scheduler/RNGs (accelerate) plus :class:`RLState` (KL
coefficient, each process's sampling generator), and the data order and minibatch shuffles are pure
functions of (seed, step), so an interrupted and resumed run gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from rewardhub.config import RLConfig
from rewardhub.data import load_rows, render_prompt, require_columns
from rewardhub.engine import (
    Checkpointer,
    DataOrder,
    MetricsLogger,
    StepChores,
    clip_and_step,
    make_accelerator,
    make_optimizer,
    make_schedule,
    save_final_model,
)
from rewardhub.errors import ConfigError, RewardProviderError
from rewardhub.evaluation import load_eval_rows, score_greedy
from rewardhub.generation import GenerationBackend, Rollout, SamplingParams, TorchBackend, sequence_logprobs
from rewardhub.maths.choices import RL_ALGOS
from rewardhub.maths.rl import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    loss_token_weights,
    masked_mean,
)
from rewardhub.maths.value_head import ActorCritic, ValueHead, hidden_size_of
from rewardhub.models import LoraOptions, disable_dropout, load_model, load_tokenizer
from rewardhub.recipes.rollout_buffer import (
    LossSettings,
    RolloutBatch,
    adjusted_scores,
    group_advantages,
    ppo_advantages,
    rl_loss,
    rows_with_gradient,
    token_kl,
)
from rewardhub.reward_resolution import build_reward, reward_spec_of, summarize
from rewardhub.rewards import Reward, RewardProvider, Sample, Status

log = logging.getLogger(__name__)
Callback = Callable[[int, dict[str, float]], None]
#: --reward when neither the flag nor the task names one
RL_FALLBACK_REWARD = "verifier"


class RLState:
    """Loop state beyond accelerate's: the KL coefficient, every process's sampling RNG, eval before training.

    Registered with ``accelerator.register_for_checkpointing``, so it is written inside the checkpoint
    directory before ``trainer_state.json`` (a half-written checkpoint is never resumed).
    """

    def __init__(self, kl_ctl, generator: torch.Generator, process_index: int):
        self.kl_ctl, self.generator, self.rank = kl_ctl, generator, process_index
        self.eval_before: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        from accelerate.utils import gather_object

        mine = base64.b64encode(bytes(self.generator.get_state().tolist())).decode()
        return {"kl_coef": self.kl_ctl.value, "generators": gather_object([mine]), "eval_before": self.eval_before}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kl_ctl.value = float(state["kl_coef"])
        raw = base64.b64decode(state["generators"][self.rank])
        self.generator.set_state(torch.tensor(list(raw), dtype=torch.uint8))
        self.eval_before = dict(state.get("eval_before", {}))


@dataclass
class Run:
    """Everything a step needs, built once by :func:`setup`."""

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
    state: RLState
    losses: LossSettings
    timings: dict[str, float] = field(default_factory=dict)

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
        backend: the rollout backend; default :class:`~rewardhub.generation.TorchBackend`.
    """
    cfg.validate()
    if cfg.algo not in RL_ALGOS:
        raise ConfigError(f"train_rl runs {', '.join(RL_ALGOS)}; got algo {cfg.algo!r}")
    own = provider is None
    provider = provider if provider is not None else build_reward(reward_spec_of(cfg, RL_FALLBACK_REWARD),
                                                                  cfg.reward_args)
    try:
        return _train(setup(cfg, provider, backend or TorchBackend()), callbacks)
    finally:
        if own:
            provider.close()


def setup(cfg: RLConfig, provider: RewardProvider, backend: GenerationBackend) -> Run:
    """Load data and models, build optimizer and state, prepare with accelerate."""
    accelerator = make_accelerator(cfg)
    rows = load_rows(cfg.data, "train", cfg.data_args, cfg.column_map)
    require_columns(rows, ["prompt"], "RL training (prompts to sample from)", non_empty=True)
    eval_rows = load_eval_rows(cfg.data, cfg.eval_data, cfg.data_args, cfg.column_map, cfg.eval_size)
    if eval_rows is not None and "prompt" not in eval_rows.column_names:
        eval_rows = None
    tokenizer = load_tokenizer(cfg.model)
    net, ref = build_models(cfg, tokenizer)
    optimizer, scheduler = make_rl_optimizer(net, cfg, accelerator.num_processes)
    model, optimizer, scheduler = accelerator.prepare(net, optimizer, scheduler)
    if isinstance(ref, torch.nn.Module):
        ref.to(accelerator.device)
    if cfg.adaptive_kl:
        kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    else:
        kl_ctl = FixedKLController(cfg.kl_coef)
    generator = torch.Generator(device=accelerator.device).manual_seed(cfg.seed * 7919 + accelerator.process_index)
    state = RLState(kl_ctl, generator, accelerator.process_index)
    accelerator.register_for_checkpointing(state)
    params = SamplingParams(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k)
    losses = LossSettings(cfg.clip_eps, cfg.clip_eps_high, cfg.vf_coef, cfg.clip_value, cfg.kl_loss_coef)
    return Run(cfg, accelerator, tokenizer, model, ref, optimizer, scheduler, provider, backend, rows, eval_rows,
               DataOrder(len(rows), cfg.seed), params, eos_ids_of(tokenizer, net.policy), state, losses)


def build_models(cfg: RLConfig, tokenizer) -> tuple[ActorCritic, Any]:
    """Policy (+ value head / separate critic for PPO) and the frozen reference, all with dropout off."""
    lora = LoraOptions(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
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


def make_rl_optimizer(net: ActorCritic, cfg: RLConfig, num_processes: int = 1):
    """:func:`make_optimizer`, with the value head in its own group at ``lr * value_lr_mult`` (same schedule)."""
    optimizer, scheduler = make_optimizer(net, cfg, num_processes)
    if net.value_head is None or cfg.value_lr_mult == 1.0:
        return optimizer, scheduler
    head = list(net.value_head.parameters())
    ids = {id(p) for p in head}
    groups = [{"params": [p for p in g["params"] if id(p) not in ids], "weight_decay": g["weight_decay"]}
              for g in optimizer.param_groups]
    groups.append({"params": head, "weight_decay": 0.0, "lr": cfg.lr * cfg.value_lr_mult})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=optimizer.defaults["betas"])
    return optimizer, make_schedule(optimizer, cfg, num_processes)


def eos_ids_of(tokenizer, model) -> list[int]:
    """The tokenizer's EOS plus the model's generation-config EOS ids (end-of-turn tokens), minus pad."""
    ids = [int(tokenizer.eos_token_id)]
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for i in [extra] if isinstance(extra, int) else (extra or []):
        if i not in ids and i != tokenizer.pad_token_id:
            ids.append(int(i))
    return ids


def _train(run: Run, callbacks: Sequence[Callback]) -> dict[str, Any]:
    cfg, accelerator = run.cfg, run.accelerator
    checkpointer = Checkpointer(accelerator, cfg.out, cfg.keep_checkpoints)
    start = checkpointer.resume(cfg.resume)
    logger = MetricsLogger(accelerator, cfg.out, cfg.max_steps, f"{cfg.algo}__{cfg.seed}__{int(time.time())}",
                           asdict(cfg), start, cfg.algo)
    evaluate = (lambda: evaluate_rl(run)) if run.eval_rows is not None else None
    chores = StepChores(cfg, logger, checkpointer, callbacks, evaluate,
                        state=lambda: {"kl_coef": run.state.kl_ctl.value})
    window: list[dict[str, float]] = []
    with chores.guard(start, stopping=(KeyboardInterrupt, RewardProviderError)):
        if evaluate is not None and start == 0:
            run.state.eval_before = chores.evaluate_now(0)
        for step in range(start + 1, cfg.max_steps + 1):
            metrics = rl_step(run, step)
            window.append(metrics)
            stop = chores.time_is_up(step)
            if step % cfg.log_every == 0 or step == cfg.max_steps or stop:
                logger.log(step, _average(window))
                window = []
            chores.after_step(step, metrics, f"reward {metrics.get('reward/mean', float('nan')):.3f}")
            if stop:
                break
    final: dict[str, Any] = {f"before/{k}": v for k, v in run.state.eval_before.items()}
    if evaluate is not None:
        after = chores.evaluate_now(chores.completed)
        final.update({f"after/{k}": v for k, v in after.items()})
    final["steps"] = chores.completed
    chores.finish(start)
    final["model_path"] = str(save_model(run))
    logger.close()
    return final


def rl_step(run: Run, step: int) -> dict[str, float]:
    """One full step: rollout, score, advantages, update. Returns this step's metrics (all processes agree)."""
    cfg, acc = run.cfg, run.accelerator
    t0 = time.perf_counter()
    rows, prompts, rollout = sample_rollout(run, step)
    t1 = time.perf_counter()
    completions = decode(run.tokenizer, rollout)
    rewards = run.provider([Sample(p, c, r) for p, c, r in zip(prompts, completions, rows)])
    t2 = time.perf_counter()
    valid = torch.tensor([r.usable for r in rewards], device=acc.device)
    check_failures(run, rewards, valid, step)
    batch, scores, kl_tok = score_rollout(run, rollout, rewards, valid)
    seq_adv = batch.advantages if batch.advantages.dim() == 1 else masked_mean(batch.advantages, batch.train_mask, 1)
    t3 = time.perf_counter()
    train_stats = update(run, batch, step)
    t4 = time.perf_counter()

    n_valid = valid.sum().clamp_min(1)
    kl_seq = float(_reduce(run, ((kl_tok * batch.train_mask).sum(1) * valid).sum() / n_valid))
    run.state.kl_ctl.update(kl_seq, len(batch) * acc.num_processes)
    n_tokens = float(_reduce(run, rollout.completion_mask.sum().float(), "sum"))
    kl = {"kl/mean_per_seq": kl_seq, "kl/coef": run.state.kl_ctl.value} if run.ref is not None else {}
    metrics = {**reward_metrics(run, rewards, scores, valid), **kl, **train_stats,
               "completions/mean_length": float(_reduce(run, rollout.completion_lengths.float().mean())),
               "completions/eos_rate": float(_reduce(run, rollout.eos_reached.float().mean())),
               "lr": run.scheduler.get_last_lr()[0], "time/step": t4 - t0, "time/generation": t1 - t0,
               "time/scoring": t2 - t1, "time/forward": t3 - t2, "time/update": t4 - t3,
               "time/tokens_per_s": n_tokens / max(t1 - t0, 1e-9)}
    if batch.old_values is not None:
        m = batch.train_mask
        metrics["value/mean"] = float(_reduce(run, masked_mean(batch.old_values, m)))
        if bool(m.any()):
            metrics["value/explained_variance"] = float(explained_variance(batch.old_values, batch.returns, m))
    metrics.update({f"provider/{k}": v for k, v in run.provider.metrics().items()})
    if cfg.completions_every and step % cfg.completions_every == 0 and acc.is_main_process:
        write_completions(Path(cfg.out) / "completions" / f"step_{step:05d}.jsonl", prompts, completions,
                          rewards, seq_adv, rollout.eos_reached)
    return metrics


def sample_rollout(run: Run, step: int) -> tuple[list[dict], list[str], Rollout]:
    """This process's prompts for ``step`` (each repeated ``G`` times, consecutively) and their completions."""
    cfg, acc, tok = run.cfg, run.accelerator, run.tokenizer
    indices = run.order.batch(step - 1, cfg.batch_size * acc.num_processes)
    with acc.split_between_processes(indices) as mine:
        rows = [dict(run.rows[i]) for i in mine]
    texts = [render_prompt(r["prompt"], tok) for r in rows]
    keep = max(1, cfg.max_length - cfg.max_new_tokens)
    ids = [p[-keep:] for p in tok(texts, add_special_tokens=False)["input_ids"]]
    G = cfg.generations
    rows, texts, ids = ([x for x in xs for _ in range(G)] for xs in (rows, texts, ids))
    rollout = run.backend.generate(run.net.policy, ids, run.params, eos_token_id=run.eos_ids,
                                   pad_token_id=tok.pad_token_id, generator=run.state.generator)
    return rows, texts, rollout


def decode(tokenizer, rollout: Rollout) -> list[str]:
    """Completion texts up to (excluding) EOS, without special tokens."""
    lengths = (rollout.completion_lengths - rollout.eos_reached.long()).tolist()
    return [tokenizer.decode(row[:n], skip_special_tokens=True)
            for row, n in zip(rollout.completion_ids.tolist(), lengths)]


def check_failures(run: Run, rewards: list[Reward], valid: torch.Tensor, step: int) -> None:
    """Stop with a clear message when the share of failed rewards (all processes) exceeds the threshold."""
    failed = float(_reduce(run, (~valid).sum().float(), "sum"))
    total = float(_reduce(run, torch.tensor(float(len(valid)), device=valid.device), "sum"))
    if failed and failed / total > run.cfg.max_failure_rate:
        first = next((r for r in rewards if not r.usable), None)
        why = f"; first failure: {first.status.value}: {first.detail}" if first else ""
        raise RewardProviderError(
            f"reward provider {run.provider.display_name} failed on {int(failed)} of {int(total)} samples at step "
            f"{step} ({failed / total:.0%} > max_failure_rate {run.cfg.max_failure_rate:g}){why}. Fix the reward "
            "source (timeouts, server, sandbox) or raise --max-failure-rate; finished steps are checkpointed.")


@torch.no_grad()
def rollout_forward(run: Run, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Old log-probs (+ values) and reference log-probs by fresh eval-mode passes with generation positions.

    The policy pass is skipped when nothing needs it: without a value head, and unless
    ``recompute_logprobs`` asks for it, the sampler's log-probs *are* the old log-probs (the same model, the
    same positions, the same temperature; tested equal to a fresh pass). That saves a full forward per step.
    """
    net, cfg = run.net, run.cfg
    temp = run.params.logprob_temperature
    ids, mask, pos, P = rollout.input_ids, rollout.attention_mask, rollout.position_ids, rollout.prompt_length
    chunk = max(1, math.ceil((cfg.minibatch_size or len(rollout)) / cfg.grad_accum))
    policy_pass = net.has_values or cfg.recompute_logprobs
    was_training = net.training
    net.eval()
    old, values, ref = [], [], []
    try:
        for s in range(0, len(rollout), chunk):
            sl = slice(s, s + chunk)
            if policy_pass:
                lp, v, _ = net(ids[sl], mask[sl], pos[sl], P, temp)
            else:
                lp, v = rollout.logprobs[sl], None
            old.append(lp)
            values.append(v)
            if run.ref == "adapter":
                with net.policy.disable_adapter():
                    ref.append(sequence_logprobs(net.policy, ids[sl], mask[sl], P, temp, pos[sl]))
            elif run.ref is not None:
                ref.append(sequence_logprobs(run.ref, ids[sl], mask[sl], P, temp, pos[sl]))
    finally:
        net.train(was_training)
    cm = rollout.completion_mask.float()
    old_lp = torch.cat(old) * cm
    vals = torch.cat(values) * cm if values[0] is not None else None
    return old_lp, vals, (torch.cat(ref) * cm if ref else None)


def score_rollout(run: Run, rollout: Rollout, rewards: list[Reward],
                  valid: torch.Tensor) -> tuple[RolloutBatch, torch.Tensor, torch.Tensor]:
    """The :class:`RolloutBatch` with advantages (and returns), the adjusted scores and per-token KL."""
    cfg = run.cfg
    old_lp, values, ref_lp = rollout_forward(run, rollout)
    batch = RolloutBatch(rollout.input_ids, rollout.attention_mask, rollout.position_ids, rollout.prompt_length,
                         rollout.completion_mask, valid, old_lp, ref_lp, values)
    raw = torch.tensor([r.value for r in rewards], device=valid.device)
    scores = adjusted_scores(raw, rollout.eos_reached, valid, cfg.missing_eos_penalty)
    kl_tok = token_kl(old_lp, ref_lp, batch.mask, cfg.kl_estimator)
    beta = run.state.kl_ctl.value if cfg.kl_in_reward else 0.0
    if cfg.algo == "ppo":
        batch.advantages, batch.returns, _ = ppo_advantages(batch, scores, kl_tok, beta, cfg.gamma, cfg.lam,
                                                            cfg.whiten_rewards, cfg.whiten_advantages)
    else:
        batch.advantages, _ = group_advantages(cfg.algo, batch, scores, kl_tok, beta, cfg.generations,
                                               cfg.scale_rewards, cfg.whiten_rewards)
    return batch, scores, kl_tok


def update(run: Run, batch: RolloutBatch, step: int) -> dict[str, float]:
    """``ppo_epochs`` passes of shuffled minibatches; stops early past ``target_kl``; one LR-schedule step."""
    cfg = run.cfg
    n = len(batch)
    size = min(cfg.minibatch_size or n, n)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    count, epochs = 0, 0
    run.model.train()
    stop = False
    for epoch in range(cfg.ppo_epochs):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 101 + epoch)
        perm = torch.randperm(n, generator=g).to(batch.input_ids.device)
        for s in range(0, n, size):
            stats = minibatch_step(run, batch.select(perm[s:s + size]), with_entropy=epoch == 0)
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
    run.scheduler.step()
    out = {k: v / counts[k] for k, v in sums.items()}  # a key a minibatch did not measure is not averaged in
    out.update({"update/epochs": float(epochs), "update/early_stopped": float(stop), "update/minibatches": count})
    return out


def minibatch_step(run: Run, mb: RolloutBatch, with_entropy: bool) -> dict[str, float] | None:
    """One optimizer step on a minibatch, split in ``grad_accum`` chunks; loss = token-mean over all of it.

    With ``skip_zero_advantage`` the rows that cannot carry gradient (:func:`rows_with_gradient`) are left
    out of the forward and backward passes; the loss keeps the whole minibatch's token count as its
    normaliser, so the gradient is the same as without skipping (up to float summation order). A chunk left
    empty keeps one row (its loss is exactly 0): every process still runs a backward pass, which DDP's
    gradient all-reduce needs, and the optimizer still steps on (zero) gradients as it would have, so
    AdamW's momentum and the LR schedule are unchanged. The policy statistics (clip fraction, approx KL,
    entropy) are then over the rows that were run. When no process has a row that can move the weights,
    not even that row runs: :func:`_step_on_zero_gradient`.

    Returns None (no step) when no process has a usable token in the minibatch.
    """
    import contextlib

    acc, cfg = run.accelerator, run.cfg
    world = acc.num_processes
    m = mb.train_mask
    total, n_seqs = _reduce(run, torch.stack([m.sum(), m.any(dim=1).sum()]).float(), "sum").tolist()
    if total == 0:
        return None
    weights = loss_token_weights(m, cfg.loss_agg, total, n_seqs, cfg.max_new_tokens)  # whole-minibatch normalisers
    rows = torch.arange(len(mb), device=mb.input_ids.device)
    chunks = [c for c in rows.chunk(cfg.grad_accum) if len(c)]
    if cfg.skip_zero_advantage:
        live = rows_with_gradient(mb, run.losses, run.net.has_values)
        if _grads_settable(acc) and float(_reduce(run, live.sum().float(), "sum")) == 0:
            return _step_on_zero_gradient(run)
        chunks = [c[live[c]] if bool(live[c].any()) else c[:1] for c in chunks]
    subs = [(mb.select(idx), weights[idx]) for idx in chunks]
    run_rows = sum(len(sub) for sub, _ in subs)
    stats_total = float(_reduce(run, sum(sub.train_mask.sum() for sub, _ in subs).float(), "sum"))
    sums: dict[str, float] = {"update/frac_rows_skipped": (1 - run_rows / len(mb)) / world}
    for k, (sub, sub_weights) in enumerate(subs):
        n_tok = float(sub.train_mask.sum())
        ctx = contextlib.nullcontext() if k == len(subs) - 1 else acc.no_sync(run.model)
        with ctx:
            logp, values, entropy = run.model(sub.input_ids, sub.attention_mask, sub.position_ids,
                                              sub.completion_start, run.params.logprob_temperature, with_entropy)
            loss, stats = rl_loss(logp, values, sub, run.losses, sub_weights)
            acc.backward(loss * world)  # DDP averages over processes
        if entropy is not None:
            stats["policy/entropy"] = masked_mean(entropy, sub.train_mask)
        for name, v in stats.items():
            sums[name] = sums.get(name, 0.0) + float(v) * n_tok / max(stats_total, 1.0)
    grad_norm = clip_and_step(acc, run.model, run.optimizer, cfg.max_grad_norm)  # the schedule steps per rollout
    names = sorted(sums)
    reduced = _reduce(run, torch.tensor([sums[k] for k in names], device=acc.device), "sum").tolist()
    return {**dict(zip(names, reduced)), "update/grad_norm": grad_norm}


def _grads_settable(acc) -> bool:
    """Whether gradients may be written directly: a plain or DDP-wrapped module (FSDP and DeepSpeed shard them)."""
    from accelerate.utils import DistributedType

    return acc.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.XLA,
                                        DistributedType.MEGATRON_LM)


def _step_on_zero_gradient(run: Run) -> dict[str, float]:
    """No row on any process can move the weights: zero gradients without a forward or backward pass.

    The optimizer still steps, as it would have on the zero gradients a backward pass would produce (AdamW's
    momentum keeps moving the weights), so the run is unchanged; only the policy loss (exactly 0) is known.
    Every trainable parameter of a causal LM is in the loss's graph, so a backward pass would have given each
    one a (zero) gradient too. Every process takes this branch together (the live-row count is all-reduced).
    """
    for p in run.model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    grad_norm = clip_and_step(run.accelerator, run.model, run.optimizer, run.cfg.max_grad_norm)
    return {"policy/loss": 0.0, "update/frac_rows_skipped": 1.0, "update/grad_norm": grad_norm}


def reward_metrics(run: Run, rewards: list[Reward], scores: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """Reward mean/std (all processes), per-component mean/std (this process), status shares and counts."""
    acc = run.accelerator
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
def evaluate_rl(run: Run) -> dict[str, float]:
    """Greedy completions of the held-out prompts, scored by the provider: mean reward (and accuracy)."""
    cfg = run.cfg
    return score_greedy(run.net.policy, run.tokenizer, run.eval_rows, run.provider, cfg.max_new_tokens,
                        batch_size=max(cfg.batch_size * cfg.generations, 8), seed=cfg.seed)


def save_model(run: Run) -> Path:
    """``out/model`` as a plain HF checkpoint; PPO's value head beside it in ``value_head.pt``."""
    acc, net = run.accelerator, run.net
    path = save_final_model(acc, net.policy, run.tokenizer, run.cfg.out)
    if net.value_head is not None and acc.is_main_process:
        torch.save(net.value_head.state_dict(), path / "value_head.pt")
        if net.critic is not None:
            net.critic.save_pretrained(Path(run.cfg.out) / "critic")
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


def _reduce(run: Run, x: torch.Tensor, op: str = "mean") -> torch.Tensor:
    if run.accelerator.num_processes == 1:
        return x
    return run.accelerator.reduce(x.to(run.accelerator.device), op)


def _average(window: list[dict[str, float]]) -> dict[str, float]:
    keys = list(dict.fromkeys(k for m in window for k in m))
    return {k: sum(m[k] for m in window if k in m) / sum(k in m for m in window) for k in keys}
