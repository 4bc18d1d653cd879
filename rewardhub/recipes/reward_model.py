"""Reward-model training: a Bradley-Terry scorer learned from (prompt, chosen, rejected) pairs.

Read top to bottom: pairs -> token ids (prompt + reply + EOS, the prompt cut from the left) -> for each step,
accumulate micro-batches (chosen and rejected scored together, in groups of similar length) -> clip, step, schedule
(:class:`RewardModel`; :func:`rewardhub.loop.run` logs, evaluates held-out pairwise accuracy and checkpoints)
-> calibration statistics -> ``out/model``.

The model is ``AutoModelForSequenceClassification`` with one output (``load_model(kind="reward")``); it
reads the last token, which is always EOS here. The loss is ``-log sigmoid(r_c - r_r - margin)`` (margin from
an optional ``margin`` column) plus optional centring, averaged over *all pairs of the optimizer step*, so
gradient accumulation gives the same update as a bigger batch.

``out/model`` loads by path (a LoRA adapter is merged first). Next to it, ``rewardhub_rm.json`` stores the
mean and standard deviation of the model's scores over the chosen and rejected replies of a calibration set
(the training pairs by default), so the ``reward-model`` provider can report scores with mean 0 and std 1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewardhub.batching import length_groups
from rewardhub.config import RewardModelConfig
from rewardhub.data import load_rows, require_columns, with_explicit_prompts
from rewardhub.engine import DataOrder, clip_and_step, make_optimizer, save_final_model
from rewardhub.errors import DataError
from rewardhub.evaluation import load_eval_rows
from rewardhub.loop import Callback, Outcome, run
from rewardhub.maths.preference import bradley_terry_loss
from rewardhub.models import LoraOptions, check_lengths_fit, load_model, load_tokenizer
from rewardhub.recipes.dpo import encode_completion, pair_texts

log = logging.getLogger(__name__)

CALIBRATION_FILE = "rewardhub_rm.json"
STAT_KEYS = ("loss", "accuracy", "margin", "reward_chosen", "reward_rejected")


def encode_scored(tokenizer, prompt: str, completion: str, max_length: int) -> list[int]:
    """Token ids the reward model scores: prompt + reply + EOS, the prompt cut from the LEFT to fit.

    The reply keeps its start (cut from the right only when it alone exceeds ``max_length``); cutting the
    prompt's beginning keeps the end of a long conversation, the part the reply answers.
    """
    c_ids = encode_completion(tokenizer, completion)[:max_length]
    p_ids = tokenizer(prompt, add_special_tokens=False).input_ids if prompt else []
    budget = max_length - len(c_ids)
    p_ids = p_ids[len(p_ids) - budget:] if 0 < budget < len(p_ids) else (p_ids if budget > 0 else [])
    return p_ids + c_ids


def tokenize_rm_pairs(rows, tokenizer, max_length: int, use_margin: bool = True) -> list[dict[str, Any]]:
    """Rows -> ``{"chosen", "rejected"}`` token ids (and ``margin`` when the rows have one)."""
    has_margin = use_margin and "margin" in getattr(rows, "column_names", ())
    examples = []
    for i, row in enumerate(rows):
        prompt, chosen, rejected = pair_texts(row, tokenizer, i)
        ex = {"chosen": encode_scored(tokenizer, prompt, chosen, max_length),
              "rejected": encode_scored(tokenizer, prompt, rejected, max_length)}
        if has_margin:
            if row["margin"] is None:
                raise DataError(f"row {i}: `margin` is empty; give every row a margin or drop the column")
            ex["margin"] = float(row["margin"])
        examples.append(ex)
    if not examples:
        raise DataError("the reward-model data has no pairs")
    return examples


def collate_sequences(seqs: Sequence[list[int]], pad_id: int):
    """Right-padded ``(N, L)`` ids and attention mask."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask


def score_sequences(model, ids, mask):
    """``(N,)`` float32 scores: the classifier output at each row's last real token."""
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, 0].float()


def grouped_scores(model, seqs: Sequence[list[int]], pad_id: int, device):
    """``(N,)`` scores of ``seqs`` in their order, with gradients, and the number of real tokens.

    The sequences go through the model as groups of similar length (:func:`rewardhub.batching.length_groups`),
    each padded on its own: a pair's chosen and rejected replies often differ in length, and one padded batch
    spends much of its forward and backward on padding. A score reads the row's last real token, which right
    padding after it does not change (causal attention), so the scores and their gradients are those of one
    padded forward (tested).
    """
    import torch

    groups = length_groups(range(len(seqs)), seqs, length=len)
    parts = []
    for group in groups:
        ids, mask = (t.to(device) for t in collate_sequences([seqs[i] for i in group], pad_id))
        parts.append(score_sequences(model, ids, mask))
    order = torch.tensor([i for group in groups for i in group], device=device)
    return torch.cat(parts)[torch.argsort(order)], sum(len(s) for s in seqs)


def score_ids(model, seqs: Sequence[list[int]], pad_id: int, batch_size: int, device) -> list[float]:
    """Scores of many sequences, batched by length (less padding), returned in input order."""
    import torch

    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [0.0] * len(seqs)
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            chunk = order[s:s + batch_size]
            ids, mask = (t.to(device) for t in collate_sequences([seqs[i] for i in chunk], pad_id))
            for i, v in zip(chunk, score_sequences(model, ids, mask).tolist()):
                out[i] = v
    return out


def train_reward_model(cfg: RewardModelConfig, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train a Bradley-Terry reward model; returns the final metrics (held-out accuracy and margin when there
    is held-out data, the calibration mean/std, and ``model_path``)."""
    cfg.validate()
    check_lengths_fit(cfg)  # from the model's config: before any data or weights load
    return run(RewardModel(cfg), cfg, callbacks)


@dataclass
class RewardModelState:
    """What a reward-model step needs, built once by :meth:`RewardModel.setup`."""

    accelerator: Any
    tokenizer: Any
    model: Any  # prepared
    optimizer: Any
    scheduler: Any
    train_rows: Any  # the default calibration set
    examples: list[dict[str, Any]]
    eval_examples: list[dict[str, Any]] | None
    order: DataOrder


class RewardModel:
    """The reward-model recipe for :func:`rewardhub.loop.run`."""

    label = "reward model"
    eval_before = False

    def __init__(self, cfg: RewardModelConfig):
        self.cfg = cfg

    def setup(self, accelerator) -> RewardModelState:
        cfg = self.cfg
        # before the model; chosen/rejected without a prompt (TRL's implicit prompt) get it extracted
        train_rows = with_explicit_prompts(load_rows(cfg.data, "train", cfg.data_args, cfg.column_map))
        require_columns(train_rows, ["prompt", "chosen", "rejected"], "reward-model training")
        eval_rows = with_explicit_prompts(
            load_eval_rows(cfg.data, cfg.eval_data, cfg.data_args, cfg.column_map, cfg.eval_size))
        tokenizer = load_tokenizer(cfg.model, cfg.chat_template)
        model = load_model(cfg.model, dtype=cfg.dtype, gradient_checkpointing=cfg.gradient_checkpointing,
                           lora=LoraOptions.of(cfg), tokenizer=tokenizer,
                           kind="reward")
        examples = tokenize_rm_pairs(train_rows, tokenizer, cfg.max_length, cfg.use_margin)
        eval_examples = None
        if eval_rows is not None:
            eval_examples = tokenize_rm_pairs(eval_rows, tokenizer, cfg.max_length, False)
        optimizer, scheduler = make_optimizer(model, cfg, accelerator.num_processes)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        model.train()
        return RewardModelState(accelerator, tokenizer, model, optimizer, scheduler, train_rows, examples,
                                eval_examples, DataOrder(len(examples), cfg.seed))

    def step(self, state: RewardModelState, step: int) -> dict[str, float]:
        cfg, accelerator = self.cfg, state.accelerator
        micro, world = cfg.batch_size, accelerator.num_processes
        shares = state.order.step_batches(accelerator, step, cfg.grad_accum, micro)
        batches = [[state.examples[i] for i in mine] for mine in shares]
        metrics = _optimizer_step(accelerator, state.model, state.optimizer, state.scheduler, batches, cfg,
                                  state.tokenizer.pad_token_id)
        metrics["lr"] = state.scheduler.get_last_lr()[0]
        metrics["epoch"] = state.order.epoch_of(step * cfg.grad_accum, micro * world)
        return metrics

    def evaluate(self, state: RewardModelState) -> dict[str, float] | None:
        if state.eval_examples is None:
            return None
        result = evaluate_reward_model(state.accelerator, state.model, state.eval_examples, self.cfg,
                                       state.tokenizer.pad_token_id)
        state.model.train()
        return result

    def finish(self, state: RewardModelState, outcome: Outcome) -> dict[str, Any]:
        """Calibrate on the calibration pairs, save ``out/model`` with the statistics beside it."""
        accelerator, cfg = state.accelerator, self.cfg
        final: dict[str, Any] = {f"train/{k}": v for k, v in outcome.last.items()}
        final.update({**outcome.after, "steps": outcome.steps})
        calibration = calibrate(accelerator.unwrap_model(state.model), state.tokenizer, cfg, state.train_rows,
                                accelerator.device)
        final.update({f"calibration/{k}": v for k, v in calibration.items() if isinstance(v, (int, float))})
        path = save_reward_model(accelerator, state.model, state.tokenizer, cfg.out, calibration)
        final["model_path"] = str(path)
        return final


def _optimizer_step(accelerator, model, optimizer, scheduler, batches, cfg: RewardModelConfig, pad_id: int):
    """One optimizer step over ``grad_accum`` micro-batches of pairs; the loss is the mean over all pairs."""
    import torch

    world = accelerator.num_processes
    total_pairs = int(accelerator.reduce(torch.tensor(sum(len(b) for b in batches), device=accelerator.device),
                                         "sum"))
    sums = dict.fromkeys(STAT_KEYS, 0.0)
    tokens = 0
    for k, batch in enumerate(batches):
        n = len(batch)
        seqs = [e["chosen"] for e in batch] + [e["rejected"] for e in batch]
        margin = None
        if "margin" in batch[0]:
            margin = torch.tensor([e["margin"] for e in batch], dtype=torch.float32, device=accelerator.device)
        sync = k == len(batches) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            scores, real_tokens = grouped_scores(model, seqs, pad_id, accelerator.device)
            loss, stats = bradley_terry_loss(scores[:n], scores[n:], margin, cfg.center_coef)
            # bradley_terry_loss averages over this micro-batch; scale to the mean over every pair of the step.
            accelerator.backward(loss * n * world / max(total_pairs, 1))
        sums["loss"] += float(loss.detach()) * n
        sums["accuracy"] += float(stats["accuracy"]) * n
        sums["margin"] += float(stats["margin"]) * n
        sums["reward_chosen"] += float(scores[:n].detach().sum())
        sums["reward_rejected"] += float(scores[n:].detach().sum())
        tokens += real_tokens
    grad_norm = clip_and_step(accelerator, model, optimizer, cfg.max_grad_norm, scheduler)
    values = accelerator.reduce(torch.tensor([sums[k] for k in STAT_KEYS], device=accelerator.device), "sum")
    metrics = {k: float(v) / max(total_pairs, 1) for k, v in zip(STAT_KEYS, values.tolist())}
    metrics.update({"grad_norm": grad_norm, "tokens": tokens})
    return metrics


def evaluate_reward_model(accelerator, model, examples, cfg: RewardModelConfig, pad_id: int) -> dict[str, float]:
    """Held-out pairwise accuracy (share of pairs with r_chosen > r_rejected; ties count as wrong), mean margin
    r_c - r_r, Bradley-Terry loss, and the mean score."""
    import torch

    was_training = model.training
    model.eval()
    seqs = [e["chosen"] for e in examples] + [e["rejected"] for e in examples]
    scores = torch.tensor(score_ids(model, seqs, pad_id, cfg.batch_size * 2, accelerator.device))
    n = len(examples)
    loss, stats = bradley_terry_loss(scores[:n], scores[n:])
    model.train(was_training)
    return {"accuracy": float(stats["accuracy"]), "margin": float(stats["margin"]), "loss": float(loss),
            "mean_reward": float(scores.mean())}


def calibrate(model, tokenizer, cfg: RewardModelConfig, train_rows, device) -> dict[str, Any]:
    """Mean and std of the scores over the chosen and rejected replies of the calibration pairs."""
    rows, source = train_rows, "train"
    if cfg.calibration_data:
        rows = with_explicit_prompts(load_rows(cfg.calibration_data, "train", None, cfg.column_map))
        source = cfg.calibration_data
        require_columns(rows, ["prompt", "chosen", "rejected"], "reward-model calibration")
    if cfg.calibration_size and len(rows) > cfg.calibration_size:
        rows = rows.select(range(cfg.calibration_size))
    examples = tokenize_rm_pairs(rows, tokenizer, cfg.max_length, use_margin=False)
    was_training = model.training
    model.eval()
    scores = score_ids(model, [e[s] for e in examples for s in ("chosen", "rejected")], tokenizer.pad_token_id,
                       cfg.batch_size * 2, device)
    model.train(was_training)
    std = statistics.pstdev(scores)
    return {"mean": statistics.fmean(scores), "std": std if std > 0 else 1.0, "count": len(scores),
            "source": source, "max_length": cfg.max_length}


def save_reward_model(accelerator, model, tokenizer, out: str | Path, calibration: Mapping[str, Any]) -> Path:
    """``out/model``: a plain sequence classifier (LoRA always merged: ``--reward-arg path=`` loads it by path)
    + tokenizer + ``rewardhub_rm.json``."""
    path = save_final_model(accelerator, model, tokenizer, out, merge_lora=True)
    if accelerator.is_main_process:
        (path / CALIBRATION_FILE).write_text(json.dumps(dict(calibration), indent=2))
    accelerator.wait_for_everyone()
    return path


def read_calibration(path: str | Path) -> dict[str, Any] | None:
    """The calibration statistics stored next to a reward model, or None when there are none."""
    file = Path(path) / CALIBRATION_FILE
    if not file.is_file():
        return None
    return json.loads(file.read_text())
