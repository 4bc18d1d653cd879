"""Supervised fine-tuning: next-token loss on the completion, the warm-up every other method starts from.

Read top to bottom: tokenise rows (:meth:`SFT.setup`) -> each step (:meth:`SFT.step`) accumulates micro-batches,
then clips, steps and schedules; :func:`rewardhub.loop.run` logs, evaluates and checkpoints around it.
The loss is the mean over *all completion tokens of the optimizer step* (across micro-batches and
processes), so ``batch_size=8, grad_accum=4`` gives the same update as ``batch_size=32``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rewardhub.batching import length_groups
from rewardhub.config import SFTConfig
from rewardhub.data import load_rows, prompt_and_completion
from rewardhub.engine import DataOrder, clip_and_step, make_optimizer, save_final_model
from rewardhub.errors import DataError
from rewardhub.evaluation import load_eval_rows, score_greedy
from rewardhub.loop import Callback, Outcome, run
from rewardhub.models import LoraOptions, check_lengths_fit, load_model, load_tokenizer
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
    """Sum (not mean) of next-token cross-entropy over labelled tokens, and their count.

    ``use_cache=False``: a training forward needs no KV cache; without it transformers builds and fills one
    (its updates showed in the SFT benchmark's profile).
    """
    import torch.nn.functional as F

    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    target = labels[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE,
                           reduction="sum")
    return loss, int((target != IGNORE).sum())


def train_sft(cfg: SFTConfig, callbacks: Sequence[Callback] = (),
              provider: RewardProvider | None = None) -> dict[str, Any]:
    """Run SFT as configured; returns the final metrics (including held-out accuracy when measurable).

    Args:
        cfg: the validated configuration.
        callbacks: called as ``cb(step, metrics)`` after every optimizer step (used by tests and tools).
        provider: scores greedy held-out completions; default: built from ``cfg.reward`` (the task's reward
            when unset, see :func:`eval_reward_spec`) and closed here.
    """
    cfg.validate()
    check_lengths_fit(cfg)  # from the model's config: before any data or weights load
    eval_rows = load_eval_rows(cfg.data, cfg.eval_data, cfg.data_args, cfg.column_map, cfg.eval_size)
    spec = eval_reward_spec(cfg, eval_rows)
    own = provider is None and spec is not None
    if own:
        provider = build_reward(spec, cfg.reward_args)
    try:
        return run(SFT(cfg, eval_rows, provider), cfg, callbacks)
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


@dataclass
class SFTState:
    """What an SFT step needs, built once by :meth:`SFT.setup`."""

    accelerator: Any
    tokenizer: Any
    model: Any  # prepared
    optimizer: Any
    scheduler: Any
    examples: list[dict[str, list[int]]]
    eval_examples: list[dict[str, list[int]]] | None
    order: DataOrder


class SFT:
    """The SFT recipe for :func:`rewardhub.loop.run`."""

    label = "sft"
    eval_before = False

    def __init__(self, cfg: SFTConfig, eval_rows=None, provider: RewardProvider | None = None):
        self.cfg, self.eval_rows, self.provider = cfg, eval_rows, provider

    def setup(self, accelerator) -> SFTState:
        cfg = self.cfg
        train_rows = load_rows(cfg.data, "train", cfg.data_args, cfg.column_map)  # a bad file: before the model
        tokenizer = load_tokenizer(cfg.model, cfg.chat_template)
        model = load_model(cfg.model, dtype=cfg.dtype, gradient_checkpointing=cfg.gradient_checkpointing,
                           lora=LoraOptions.of(cfg), tokenizer=tokenizer)
        examples = tokenize_sft(train_rows, tokenizer, cfg.max_length, cfg.completion_only_loss)
        eval_examples = None
        if self.eval_rows is not None:
            eval_examples = tokenize_sft(self.eval_rows, tokenizer, cfg.max_length)
        optimizer, scheduler = make_optimizer(model, cfg, accelerator.num_processes)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        model.train()
        return SFTState(accelerator, tokenizer, model, optimizer, scheduler, examples, eval_examples,
                        DataOrder(len(examples), cfg.seed))

    def step(self, state: SFTState, step: int) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; the loss is the mean over all their tokens.

        Each micro-batch goes through the model as groups of rows of similar length (:func:`length_groups`):
        the same loss and gradients, less padding.
        """
        import torch

        cfg, accelerator = self.cfg, state.accelerator
        world, micro = accelerator.num_processes, cfg.batch_size
        batches = [collate([state.examples[i] for i in group], state.tokenizer.pad_token_id)
                   for mine in state.order.step_batches(accelerator, step, cfg.grad_accum, micro)
                   for group in length_groups(mine, state.examples)]
        local_tokens = sum(int((labels[:, 1:] != IGNORE).sum()) for _, _, labels in batches)
        total_tokens = int(accelerator.reduce(torch.tensor(local_tokens, device=accelerator.device), "sum"))
        loss_sum = 0.0
        for k, (ids, mask, labels) in enumerate(batches):
            ids, mask, labels = (t.to(accelerator.device) for t in (ids, mask, labels))
            sync = k == len(batches) - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(state.model):
                summed, _ = summed_token_loss(state.model, ids, mask, labels)
                # DDP averages gradients over processes, so scale by world size to get the global token mean.
                accelerator.backward(summed * world / max(total_tokens, 1))
            loss_sum += float(summed.detach())
        grad_norm = clip_and_step(accelerator, state.model, state.optimizer, cfg.max_grad_norm, state.scheduler)
        loss_sum = float(accelerator.reduce(torch.tensor(loss_sum, device=accelerator.device), "sum"))
        return {"loss": loss_sum / max(total_tokens, 1), "lr": state.scheduler.get_last_lr()[0],
                "grad_norm": grad_norm, "epoch": state.order.epoch_of(step * cfg.grad_accum, micro * world),
                "tokens": total_tokens}

    def evaluate(self, state: SFTState) -> dict[str, float] | None:
        """Held-out token loss, and the provider's verdict on greedy completions of the held-out prompts.

        The verdict is ``reward_mean``, plus ``accuracy`` (the share scored ``ok``) for a provider that reports
        correctness (the verifier, exact match): the same numbers RL's evaluation reports, so an SFT run and the
        RL run after it are compared on one scale.
        """
        import torch

        if state.eval_examples is None:
            return None
        cfg, model, tokenizer = self.cfg, state.model, state.tokenizer
        model.eval()
        loss_sum, n_tokens = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(state.eval_examples), cfg.batch_size):
                ids, mask, labels = (t.to(state.accelerator.device) for t in
                                     collate(state.eval_examples[i:i + cfg.batch_size], tokenizer.pad_token_id))
                summed, n = summed_token_loss(model, ids, mask, labels)
                loss_sum, n_tokens = loss_sum + float(summed), n_tokens + n
        metrics = {"loss": loss_sum / max(n_tokens, 1)}
        if self.provider is not None:
            metrics.update(score_greedy(state.accelerator.unwrap_model(model), tokenizer, self.eval_rows,
                                        self.provider, cfg.eval_max_new_tokens, batch_size=cfg.batch_size))
        model.train()
        return metrics

    def finish(self, state: SFTState, outcome: Outcome) -> dict[str, Any]:
        path = save_final_model(state.accelerator, state.model, state.tokenizer, self.cfg.out, self.cfg.merge_lora)
        return {**outcome.after, "steps": outcome.steps, "model_path": str(path)}
