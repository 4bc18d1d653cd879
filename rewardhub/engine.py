"""The parts every recipe uses: accelerate, optimiser and schedule, data order, checkpoints, metrics.

:func:`rewardhub.loop.run` puts them together around a recipe's steps; nothing here knows about any
particular loss. Distributed training is accelerate's: DDP, FSDP and DeepSpeed configs
(``accelerate launch --config_file ...``) work unchanged.

Exact resume: a checkpoint holds the model, optimizer, scheduler and every RNG (``accelerator.save_state``)
plus ``trainer_state.json`` (the step). The data order is a pure function of (seed, step), so the data
position needs no extra state: step ``s`` always reads the same rows.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from rewardhub.console import number
from rewardhub.errors import ConfigError

log = logging.getLogger(__name__)
# accelerate warns on every checkpoint of a model with tied embeddings ("Removed shared tensor ... This
# should be OK"); it is expected for tied weights and reloads correctly (tested), so keep logs readable.
logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)

CHECKPOINT_PREFIX = "step-"


def make_accelerator(cfg: Any):
    """An ``Accelerator`` with the run's seed, tracker and project directory."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if getattr(cfg, "threads", 0):
        torch.set_num_threads(cfg.threads)
    log_with = None if cfg.report_to == "none" else cfg.report_to
    if log_with and importlib.util.find_spec(log_with) is None:
        raise ConfigError(f"report_to={log_with} needs the {log_with} package: pip install {log_with}")
    accelerator = Accelerator(log_with=log_with, project_dir=cfg.out)
    set_seed(cfg.seed)
    return accelerator


def make_optimizer(model, cfg: Any, num_processes: int = 1, own_lr: tuple[list, float] | None = None):
    """AdamW over trainable parameters (no decay on biases and norms) and a transformers LR schedule.

    ``own_lr = (params, lr)`` puts those parameters in a group of their own at ``lr``, without weight decay,
    on the same schedule (PPO's value head learns faster than the policy).
    """
    import torch

    own_params, own_rate = own_lr if own_lr is not None else ([], cfg.lr)
    own_ids = {id(p) for p in own_params}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in own_ids:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if own_params:
        groups.append({"params": list(own_params), "weight_decay": 0.0, "lr": own_rate})
    every = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95 if cfg.weight_decay else 0.999),
                                  fused=_fused_adamw_ok(every))
    return optimizer, make_schedule(optimizer, cfg, num_processes)


def _fused_adamw_ok(params) -> bool:
    """Whether torch's fused AdamW kernel can take these parameters (as transformers' default ``adamw_torch_fused``).

    One kernel launch per step instead of a dozen ops per tensor, so several times faster on small models; the
    same update rule as the per-tensor loop, equal up to float rounding.
    """
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda", "mps", "xpu")
                                for p in params)


def make_schedule(optimizer, cfg: Any, num_processes: int = 1):
    """The LR schedule over ``cfg.max_steps`` optimizer steps, with ``warmup_ratio`` of them warming up.

    accelerate steps a prepared scheduler once per process at every optimizer step, so the schedule is
    built ``num_processes`` times longer: the learning rate then follows the same curve over optimizer
    steps whatever the number of processes (measured: 2 DDP processes matched a single process exactly).
    """
    from transformers import get_scheduler

    warmup = int(cfg.warmup_ratio * cfg.max_steps) * num_processes
    return get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup,
                         num_training_steps=cfg.max_steps * num_processes)


def clip_and_step(accelerator, model, optimizer, max_grad_norm: float, scheduler=None, apply: bool = True) -> float:
    """Clip gradients (when ``max_grad_norm > 0``), step the optimizer (when ``apply``), step the schedule,
    zero the gradients; returns the pre-clip gradient norm (0.0 when not clipping)."""
    grad_norm = 0.0
    if apply and max_grad_norm > 0:
        grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), max_grad_norm))
    if apply:
        optimizer.step()
    if scheduler is not None:
        step_schedule(scheduler)
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def step_schedule(scheduler) -> None:
    """Advance the LR schedule by one optimizer step, also for a step with nothing to learn from (no update).

    Such a step keeps the schedule on the step count, on purpose; torch's "lr_scheduler.step() before
    optimizer.step()" warning (raised when the first steps had no update) does not apply, so it is not shown.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        scheduler.step()


class TokenRate:
    """Tokens per second over a logging window: ``add`` every step, ``take`` when logging (resets the window)."""

    def __init__(self) -> None:
        self.tokens, self.t0 = 0, time.time()

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def take(self) -> float:
        rate = self.tokens / max(time.time() - self.t0, 1e-9)
        self.tokens, self.t0 = 0, time.time()
        return rate


class DataOrder:
    """A deterministic, resumable stream of row indices: a fresh seeded permutation per epoch.

    Micro-batch ``m`` (counted over the whole run, all processes together) covers positions
    ``[m * B, (m + 1) * B)`` of the concatenated epoch permutations; each process then takes its share
    with ``accelerator.split_between_processes``.
    """

    def __init__(self, n_rows: int, seed: int):
        if n_rows < 1:
            raise ValueError("the training data is empty")
        self.n, self.seed = n_rows, seed
        self._cache: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        import torch

        if epoch not in self._cache:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._cache = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._cache[epoch]

    def batch(self, micro_batch: int, size: int) -> list[int]:
        start = micro_batch * size
        return [self._perm(pos // self.n)[pos % self.n] for pos in range(start, start + size)]

    def epoch_of(self, micro_batch: int, size: int) -> float:
        return micro_batch * size / self.n

    def step_batches(self, accelerator, step: int, grad_accum: int, micro: int) -> list[list[int]]:
        """This process's row indices for each of the ``grad_accum`` micro-batches of optimizer step ``step``.

        Every process reads the same global micro-batch of ``micro * num_processes`` rows and keeps its share.
        """
        batches = []
        for k in range(grad_accum):
            global_indices = self.batch((step - 1) * grad_accum + k, micro * accelerator.num_processes)
            with accelerator.split_between_processes(global_indices) as mine:
                batches.append(list(mine))
        return batches


def checkpoint_dirs(out: str | Path) -> list[Path]:
    """The ``out/checkpoints/step-N`` directories, newest first (partial ones, ``.partial-step-N``, left out)."""
    steps = [p for p in (Path(out) / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*")
             if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(steps, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]), reverse=True)


class Checkpointer:
    """Save and find ``out/checkpoints/step-N`` directories; keep the newest ``keep``.

    A checkpoint is written into ``.partial-step-N`` and renamed to ``step-N`` only when complete (its
    ``trainer_state.json`` fsynced last), so a kill or power loss mid-write leaves no ``step-N`` behind; a
    ``step-N`` whose ``trainer_state.json`` cannot be read anyway (a damaged disk, a copy gone wrong) is
    skipped with a warning and the one before it is resumed.
    """

    def __init__(self, accelerator, out: str | Path, keep: int = 2):
        self.accelerator = accelerator
        self.root = Path(out) / "checkpoints"
        self.keep = keep

    def _complete(self) -> list[Path]:
        return checkpoint_dirs(self.root.parent)

    def latest(self) -> Path | None:
        """The newest checkpoint whose ``trainer_state.json`` reads back; damaged ones are skipped (warned)."""
        for path in self._complete():
            try:
                state = json.loads((path / "trainer_state.json").read_text())
                if isinstance(state, dict) and isinstance(state.get("step"), int):
                    return path
                why = "has no step"
            except (OSError, ValueError) as exc:
                why = f"{type(exc).__name__}: {exc}"
            log.warning("checkpoint %s is damaged (trainer_state.json: %s); skipping it", path, why)
        return None

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write a checkpoint under a temporary name, then rename it into place (see the class docstring)."""
        path = self.root / f"{CHECKPOINT_PREFIX}{step}"
        partial = self.root / f".partial-{CHECKPOINT_PREFIX}{step}"
        if self.accelerator.is_main_process:
            for stale in self.root.glob(f".partial-{CHECKPOINT_PREFIX}*"):  # left by a run killed mid-write
                shutil.rmtree(stale, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(partial))
        self.accelerator.wait_for_everyone()  # every process's files are in before it becomes a checkpoint
        if self.accelerator.is_main_process:
            _write_synced(partial / "trainer_state.json", json.dumps({"step": step, **state}, indent=2))
            if path.exists():
                shutil.rmtree(path)
            os.replace(partial, path)
            _fsync_dir(self.root)
            for old in self._complete()[self.keep:]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return path

    def load(self, path: Path) -> dict[str, Any]:
        self.accelerator.load_state(str(path))
        return json.loads((path / "trainer_state.json").read_text())

    def resume(self, enabled: bool = True) -> dict[str, Any]:
        """Load the newest checkpoint (when ``enabled``): its ``trainer_state.json``; ``{"step": 0}`` if none."""
        latest = self.latest() if enabled else None
        if latest is None:
            return {"step": 0}
        state = self.load(latest)
        log.info("resumed from %s (step %d)", latest, state["step"])
        return {**state, "path": str(latest)}


class MetricsLogger:
    """Metrics to ``metrics.jsonl`` (one JSON object per line), trackers, and a rich progress bar.

    ``metrics.jsonl`` holds one history: rows past ``start_step`` (logged by an attempt that did not reach
    its next checkpoint) are dropped when a run resumes, so the resumed steps are not listed twice.
    """

    def __init__(self, accelerator, out: str | Path, total_steps: int, run_name: str, config: dict | None = None,
                 start_step: int = 0, description: str = "training"):
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.path = Path(out) / "metrics.jsonl"
        self.t0 = time.time()
        self.progress = None
        if accelerator.log_with:
            accelerator.init_trackers(run_name, config=_flat(config or {}))
        if self.main:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.path.parent.mkdir(parents=True, exist_ok=True)
            _keep_rows_up_to(self.path, start_step)
            from rewardhub.console import console

            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False,
                                     console=console)
            self.task = self.progress.add_task(description, total=total_steps, completed=start_step, info="")
            self.progress.start()

    def log(self, step: int, metrics: dict[str, float], kind: str = "train") -> None:
        record = {"step": step, "kind": kind, "time": round(time.time() - self.t0, 3),
                  **{k: _num(v) for k, v in metrics.items()}}
        if self.main:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            shown = ", ".join(f"{k}={number(v)}" for k, v in list(metrics.items())[:4])
            self.progress.console.print(f"[dim]{kind}[/] step {step}: {shown}")
        if self.accelerator.log_with:
            self.accelerator.log({f"{kind}/{k}": v for k, v in metrics.items()}, step=step)

    def note(self, text: str) -> None:
        """A line for the person watching (main process only), printed above the progress bar."""
        if self.main:
            self.progress.console.print(text, soft_wrap=True, highlight=False, markup=False)

    def advance(self, step: int, info: str = "") -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, info=info)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.accelerator.log_with:
            self.accelerator.end_training()


def save_final_model(accelerator, model, tokenizer, out: str | Path, merge_lora: bool = True) -> Path:
    """``out/model``: a plain ``save_pretrained`` directory that loads back with ``--model out/model``.

    A LoRA run also writes its adapter alone to ``out/adapter``; ``out/model`` is then the base with the
    adapter merged in (``merge_lora``), which loads without the base model (moved or deleted, it does not
    matter), or with ``merge_lora=False`` the adapter again, which points at the base by its path.
    Merging is done in place: saving is the last thing a run does with its model.
    """
    path = Path(out) / "model"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_model_dir(accelerator, model, path, merge_lora)
        tokenizer.save_pretrained(path)
    accelerator.wait_for_everyone()
    return path


def save_model_dir(accelerator, model, path: Path, merge_lora: bool = True) -> None:
    """(main process) ``model`` saved to ``path``; a peft model's adapter also to ``path.parent / "adapter"``."""
    unwrapped = accelerator.unwrap_model(model)
    # Under FSDP/DeepSpeed the full state dict must be gathered; on one process save_pretrained does it itself
    # (and handles tied embeddings without a warning).
    sharded = accelerator.num_processes > 1
    gathered = {"state_dict": accelerator.get_state_dict(model)} if sharded else {}
    if not hasattr(unwrapped, "merge_and_unload"):
        unwrapped.save_pretrained(path, **gathered)
        return
    unwrapped.save_pretrained(path.parent / "adapter", **gathered)
    if not merge_lora:
        unwrapped.save_pretrained(path, **gathered)
    elif accelerator.distributed_type in ("FSDP", "DEEPSPEED"):
        log.warning("the LoRA adapter is in %s; merging a sharded model is left to you (load the base, "
                    "peft's PeftModel.from_pretrained(base, adapter).merge_and_unload())", path.parent / "adapter")
        unwrapped.save_pretrained(path, **gathered)
    else:
        unwrapped.merge_and_unload().save_pretrained(path)


def _keep_rows_up_to(path: Path, step: int) -> None:
    """Drop the rows of ``metrics.jsonl`` logged after ``step`` (all of them when the run starts at 0)."""
    if not path.exists():
        return
    kept = []
    if step > 0:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except (ValueError, AttributeError):
                continue  # a line torn by a kill mid-write
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _num(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return None if math.isnan(f) else f


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
