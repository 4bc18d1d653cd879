"""Supervised fine-tuning: next-token loss on the completion, the warm-up every other method starts from.

Read top to bottom: tokenise rows -> for each step, accumulate micro-batches -> clip, step, schedule ->
log, evaluate, checkpoint. The loss is the mean over *all completion tokens of the optimizer step* (across
micro-batches and processes), so ``batch_size=8, grad_accum=4`` gives the same update as ``batch_size=32``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from rewardhub.config import SFTConfig
from rewardhub.data import load_rows, prompt_and_completion
from rewardhub.engine import (
    Checkpointer,
    DataOrder,
    MetricsLogger,
    StepChores,
    clip_and_step,
    make_accelerator,
    make_optimizer,
    save_final_model,
)
from rewardhub.errors import DataError
from rewardhub.evaluation import load_eval_rows, score_greedy
from rewardhub.models import LoraOptions, load_model, load_tokenizer
from rewardhub.reward_resolution import build_reward, reward_spec_of
from rewardhub.rewards import RewardProvider

log = logging.getLogger(__name__)
IGNORE = -100


def tokenize_sft(rows, tokenizer, max_length: int, completion_only_loss: bool = True) -> list[dict[str, list[int]]]:
    """Rows -> ``{"input_ids", "labels"}``: prompt tokens, completion tokens, then EOS.

    The prompt is truncated from the left and the completion from the right to fit ``max_length``.
    Labels are ``-100`` on prompt tokens when ``completion_only_loss``.
    """
    eos = tokenizer.eos_token_id
    examples = []
    for i, row in enumerate(rows):
        prompt, completion = prompt_and_completion(row, tokenizer, i)
        p_ids = tokenizer(prompt, add_special_tokens=False).input_ids if prompt else []
        c_ids = tokenizer(completion, add_special_tokens=False).input_ids
        if not c_ids or c_ids[-1] != eos:
            c_ids = [*c_ids, eos]
        c_ids = c_ids[:max_length]
        p_ids = p_ids[max(0, len(p_ids) - (max_length - len(c_ids))):] if max_length > len(c_ids) else []
        labels = ([IGNORE] * len(p_ids) if completion_only_loss else list(p_ids)) + list(c_ids)
        examples.append({"input_ids": p_ids + c_ids, "labels": labels})
    if not examples:
        raise DataError("the SFT data has no rows")
    return examples


def collate(examples: Sequence[dict[str, list[int]]], pad_id: int):
    """Right-pad a micro-batch: (input_ids, attention_mask, labels) tensors of shape (B, L)."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(e["labels"])
    return ids, mask, labels


def summed_token_loss(model, ids, mask, labels):
    """Sum (not mean) of next-token cross-entropy over labelled tokens, and their count."""
    import torch.nn.functional as F

    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    target = labels[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE,
                           reduction="sum")
    return loss, int((target != IGNORE).sum())


def train_sft(cfg: SFTConfig, callbacks: Sequence[Callable[[int, dict[str, float]], None]] = (),
              provider: RewardProvider | None = None) -> dict[str, Any]:
    """Run SFT as configured; returns the final metrics (including held-out accuracy when measurable).

    Args:
        cfg: the validated configuration.
        callbacks: called as ``cb(step, metrics)`` after every optimizer step (used by tests and tools).
        provider: scores greedy held-out completions; default: built from ``cfg.reward`` (the task's reward
            when unset, see :func:`eval_reward_spec`) and closed here.
    """
    cfg.validate()
    eval_rows = load_eval_rows(cfg.data, cfg.eval_data, cfg.data_args, cfg.column_map, cfg.eval_size)
    spec = eval_reward_spec(cfg, eval_rows)
    own = provider is None and spec is not None
    if own:
        provider = build_reward(spec, cfg.reward_args)
    try:
        return _train_sft(cfg, callbacks, eval_rows, provider)
    finally:
        if own:
            provider.close()


def eval_reward_spec(cfg: SFTConfig, eval_rows) -> str | None:
    """The reward that scores held-out completions: ``--reward``, else the task's, else exact match on ``answer``.

    None when there is nothing to score (no held-out prompts, or no reward and no ``answer`` column).
    """
    if eval_rows is None or "prompt" not in eval_rows.column_names:
        return None
    return reward_spec_of(cfg, "exact-match" if "answer" in eval_rows.column_names else None)


def _train_sft(cfg: SFTConfig, callbacks, eval_rows, provider: RewardProvider | None) -> dict[str, Any]:
    accelerator = make_accelerator(cfg)
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, dtype=cfg.dtype, gradient_checkpointing=cfg.gradient_checkpointing,
                       lora=LoraOptions(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout), tokenizer=tokenizer)
    train_rows = load_rows(cfg.data, "train", cfg.data_args, cfg.column_map)
    examples = tokenize_sft(train_rows, tokenizer, cfg.max_length, cfg.completion_only_loss)
    eval_examples = tokenize_sft(eval_rows, tokenizer, cfg.max_length) if eval_rows is not None else None

    optimizer, scheduler = make_optimizer(model, cfg, accelerator.num_processes)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    checkpointer = Checkpointer(accelerator, cfg.out, cfg.keep_checkpoints)
    start = checkpointer.resume(cfg.resume)
    world, micro = accelerator.num_processes, cfg.batch_size
    order = DataOrder(len(examples), cfg.seed)
    logger = MetricsLogger(accelerator, cfg.out, cfg.max_steps, f"sft__{cfg.seed}__{int(time.time())}",
                           asdict(cfg), start, "sft")
    evaluate = None if eval_examples is None else (
        lambda: evaluate_sft(accelerator, model, tokenizer, eval_examples, eval_rows, cfg, provider))
    chores = StepChores(cfg, logger, checkpointer, callbacks, evaluate)
    final: dict[str, Any] = {}
    with chores.guard(start):
        model.train()
        window = {"loss_sum": 0.0, "tokens": 0, "t0": time.time()}
        for step in range(start + 1, cfg.max_steps + 1):
            loss_sum, n_tokens, grad_norm = _optimizer_step(accelerator, model, optimizer, scheduler, examples, order,
                                                            step, cfg, world, micro, tokenizer.pad_token_id)
            window["loss_sum"] += loss_sum
            window["tokens"] += n_tokens
            metrics = {"loss": loss_sum / max(n_tokens, 1), "lr": scheduler.get_last_lr()[0],
                       "grad_norm": grad_norm, "epoch": order.epoch_of(step * cfg.grad_accum, micro * world)}
            stop = chores.time_is_up(step)
            if step % cfg.log_every == 0 or step == cfg.max_steps or stop:
                elapsed = time.time() - window["t0"]
                logger.log(step, {**metrics, "loss": window["loss_sum"] / max(window["tokens"], 1),
                                  "tokens_per_s": window["tokens"] / max(elapsed, 1e-9)})
                window = {"loss_sum": 0.0, "tokens": 0, "t0": time.time()}
            chores.after_step(step, metrics, f"loss {metrics['loss']:.3f}")
            if stop:
                break
    if evaluate is not None:
        final = chores.evaluate_now(chores.completed)
    final["steps"] = chores.completed
    chores.finish(start)
    final["model_path"] = str(save_final_model(accelerator, model, tokenizer, cfg.out))
    logger.close()
    return final


def _optimizer_step(accelerator, model, optimizer, scheduler, examples, order, step, cfg, world, micro, pad_id):
    """One optimizer step over ``grad_accum`` micro-batches; returns (summed loss, tokens, grad norm)."""
    import torch

    batches = [collate([examples[i] for i in mine], pad_id)
               for mine in order.step_batches(accelerator, step, cfg.grad_accum, micro)]
    local_tokens = sum(int((labels[:, 1:] != IGNORE).sum()) for _, _, labels in batches)
    total_tokens = int(accelerator.reduce(torch.tensor(local_tokens, device=accelerator.device), "sum"))
    loss_sum = 0.0
    for k, (ids, mask, labels) in enumerate(batches):
        ids, mask, labels = (t.to(accelerator.device) for t in (ids, mask, labels))
        sync = k == len(batches) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            summed, _ = summed_token_loss(model, ids, mask, labels)
            # DDP averages gradients over processes, so scale by world size to get the global token mean.
            accelerator.backward(summed * world / max(total_tokens, 1))
        loss_sum += float(summed.detach())
    grad_norm = clip_and_step(accelerator, model, optimizer, cfg.max_grad_norm, scheduler)
    loss_sum = float(accelerator.reduce(torch.tensor(loss_sum, device=accelerator.device), "sum"))
    return loss_sum, total_tokens, grad_norm


def evaluate_sft(accelerator, model, tokenizer, eval_examples, eval_rows, cfg: SFTConfig,
                 provider: RewardProvider | None = None) -> dict[str, float]:
    """Held-out token loss, and the provider's verdict on greedy completions of the held-out prompts.

    The verdict is ``reward_mean``, plus ``accuracy`` (the share scored ``ok``) for a provider that reports
    correctness (the verifier, exact match): the same numbers RL's evaluation reports, so an SFT run and the
    RL run after it are compared on one scale.
    """
    import torch

    model.eval()
    loss_sum, n_tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(eval_examples), cfg.batch_size):
            ids, mask, labels = (t.to(accelerator.device)
                                 for t in collate(eval_examples[i:i + cfg.batch_size], tokenizer.pad_token_id))
            summed, n = summed_token_loss(model, ids, mask, labels)
            loss_sum, n_tokens = loss_sum + float(summed), n_tokens + n
    metrics = {"loss": loss_sum / max(n_tokens, 1)}
    if provider is not None:
        metrics.update(score_greedy(accelerator.unwrap_model(model), tokenizer, eval_rows, provider,
                                    cfg.eval_max_new_tokens, batch_size=cfg.batch_size))
    model.train()
    return metrics
