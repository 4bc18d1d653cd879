"""The one loop every recipe runs in: accelerator, resume, logging, evaluation, checkpoints, interrupts, saving.

A recipe (``recipes/sft.py``, ``rl.py``, ``dpo.py``, ``reward_model.py``) is a small object with four methods,
:class:`Recipe`; it holds no loop of its own. Its state is its own dataclass, built by ``setup`` and passed
back to every call, so each recipe reads top to bottom and shares no base class (torchtune's rule: no
implementation inheritance). :func:`run` does the rest, once for all of them::

    accelerator -> recipe.setup -> resume the newest checkpoint -> [evaluate at step 0]
    -> for each step: recipe.step -> log the window's mean -> periodic evaluate / checkpoint -> callbacks
       (Ctrl-C, SIGTERM or a failing reward source: checkpoint the finished steps, re-raise; max_time: leave the loop)
    -> final evaluate -> final checkpoint -> recipe.finish (saves the model) -> the final metrics

Exact resume: the checkpoint holds model, optimizer, scheduler and every RNG (``accelerator.save_state``), plus
``trainer_state.json`` (the step, and the step-0 evaluation); a recipe's data order is a pure function of
(seed, step), so a resumed run gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

from rewardhub.console import number
from rewardhub.engine import Checkpointer, MetricsLogger, TokenRate, make_accelerator
from rewardhub.errors import RewardProviderError
from rewardhub.run_dir import claim

log = logging.getLogger(__name__)
Callback = Callable[[int, dict[str, float]], None]
State = TypeVar("State")
#: Errors that stop a run after checkpointing its finished steps (rerunning the command resumes there).
STOPPING = (KeyboardInterrupt, RewardProviderError)


@dataclass
class Outcome:
    """What the loop measured, handed to :meth:`Recipe.finish` to build the run's final metrics."""

    steps: int  #: the last finished step (``max_steps``, or where ``max_time`` stopped the run)
    before: dict[str, float] = field(default_factory=dict)  #: held-out metrics at step 0 (``eval_before`` only)
    after: dict[str, float] = field(default_factory=dict)  #: held-out metrics after the last step
    last: dict[str, float] = field(default_factory=dict)  #: the last step's training metrics


class Recipe(Protocol[State]):
    """A training method, as the loop sees it. ``label`` names the run; ``eval_before`` asks for a step-0 evaluation."""

    label: str
    eval_before: bool

    def setup(self, accelerator: Any) -> State:
        """Load models and data, build the optimizer, ``accelerator.prepare`` them: this recipe's state."""
        ...

    def step(self, state: State, step: int) -> dict[str, float]:
        """One optimizer step (``step`` counts from 1). A ``tokens`` entry is turned into ``tokens_per_s``."""
        ...

    def evaluate(self, state: State) -> dict[str, float] | None:
        """Held-out metrics, leaving the model ready to train; None when there is nothing held out."""
        ...

    def finish(self, state: State, outcome: Outcome) -> dict[str, Any]:
        """Save the model (``out/model``) and return the run's final metrics, ``model_path`` among them."""
        ...


def run(recipe: Recipe[Any], cfg: Any, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train ``recipe`` as ``cfg`` says (``out``, ``max_steps``, ``log_every``, ``eval_every``, ...): final metrics.

    The run directory is claimed first (:func:`rewardhub.run_dir.claim`): a rerun that may not continue the
    run in ``cfg.out`` stops there, before any model loads.
    """
    with claim(cfg), _stop_signals() as stop:
        return _run(recipe, cfg, callbacks, stop)


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM (``kill``, a scheduler's preemption, ``docker stop``) during a run.

    The first signal asks the loop to stop at the next step boundary, so the checkpoint holds whole steps only
    and a rerun resumes exactly; a second one stops at once (a step in flight is then lost or, if its update
    was already applied, the checkpoint is of the last step counted).
    """

    def __init__(self) -> None:
        self.signal: str | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt(f"{self.signal} twice")
        self.signal = signal.Signals(signum).name
        print(f"{self.signal}: stopping after this step and checkpointing the finished ones (send it again to stop "
              "now)", file=sys.stderr, flush=True)

    def check(self) -> None:
        """At a step boundary: raise KeyboardInterrupt if a stop was asked for."""
        if self.signal is not None:
            raise KeyboardInterrupt(self.signal)


@contextlib.contextmanager
def _stop_signals():
    """A :class:`StopRequest` handling SIGINT and SIGTERM for the run (the main thread only can install it)."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(recipe: Recipe[Any], cfg: Any, callbacks: Sequence[Callback], stop: StopRequest) -> dict[str, Any]:
    accelerator = make_accelerator(cfg)
    state = recipe.setup(accelerator)
    checkpointer = Checkpointer(accelerator, cfg.out, cfg.keep_checkpoints)
    resumed = checkpointer.resume(cfg.resume)
    start = resumed["step"]
    outcome = Outcome(start, before=dict(resumed.get("eval_before", {})))
    logger = MetricsLogger(accelerator, cfg.out, cfg.max_steps, f"{recipe.label}__{cfg.seed}__{int(time.time())}",
                           asdict(cfg), start, recipe.label)
    if start:
        logger.note(f"resuming from step {start} of {cfg.max_steps} ({resumed['path']})"
                    + (": nothing left to train; evaluating and saving again" if start >= cfg.max_steps else ""))
    schedule = StepSchedule(cfg, logger, checkpointer, callbacks, lambda: recipe.evaluate(state),
                            state=lambda: {"eval_before": outcome.before} if outcome.before else {})
    window: list[dict[str, float]] = []
    rate = TokenRate()
    with schedule.guard(start, STOPPING):
        if recipe.eval_before and start == 0:
            outcome.before = schedule.evaluate_now(0)
        stop.check()  # a signal during setup or the first evaluation
        for step in range(start + 1, cfg.max_steps + 1):
            metrics = recipe.step(state, step)
            schedule.completed = step  # applied: from here on a checkpoint must include it
            if "tokens" in metrics:
                rate.add(metrics.pop("tokens"))
            window.append(metrics)
            time_up = schedule.time_is_up(step)
            if step % cfg.log_every == 0 or step == cfg.max_steps or time_up:
                logged = window_mean(window)
                if rate.tokens:
                    logged["tokens_per_s"] = rate.take()
                logger.log(step, logged)
                window = []
            outcome.last = metrics
            schedule.after_step(step, metrics, ", ".join(f"{k} {number(v, 3)}" for k, v in list(metrics.items())[:2]))
            stop.check()
            if time_up:
                break
    outcome.after = schedule.evaluate_now(schedule.completed)
    outcome.steps = schedule.completed
    schedule.finish(start)
    final = recipe.finish(state, outcome)
    logger.close()
    return final


def window_mean(window: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the steps of a logging window that reported it."""
    keys = list(dict.fromkeys(k for m in window for k in m))
    return {k: sum(m[k] for m in window if k in m) / sum(k in m for m in window) for k in keys}


class StepSchedule:
    """What happens at which step around a recipe's optimizer steps: evaluation, checkpoints, the time budget.

    After each step: periodic held-out evaluation, periodic checkpoints, the progress bar and the user's
    callbacks. On a stopping error inside :meth:`guard`: a checkpoint of the last finished step. At the end
    (:meth:`finish`): a checkpoint of the final step if the schedule did not just write one.

    The training-time budget (``cfg.max_time``): :meth:`time_is_up` turns true at the first step boundary past
    it. The clock starts when :meth:`guard` is entered and leaves out the time spent in held-out evaluations,
    so two runs given the same budget get the same time to *train*, however often they evaluate. All
    processes stop at the same step (the decision is all-reduced).

    Args:
        cfg: the run's config (``max_steps``, ``eval_every``, ``save_every``, ``max_time``).
        logger: the run's :class:`~rewardhub.engine.MetricsLogger`.
        checkpointer: the run's :class:`~rewardhub.engine.Checkpointer`.
        callbacks: ``cb(step, metrics)`` after every step.
        evaluate: returns held-out metrics (and leaves the model ready to train), or None when nothing is held out.
        state: returns extra JSON state stored with every checkpoint.
    """

    def __init__(self, cfg: Any, logger: MetricsLogger, checkpointer: Checkpointer, callbacks: Sequence[Callback] = (),
                 evaluate: Callable[[], dict[str, float] | None] | None = None,
                 state: Callable[[], dict[str, Any]] = lambda: {}):
        from rewardhub.config import parse_duration

        self.cfg, self.logger, self.checkpointer = cfg, logger, checkpointer
        self.callbacks, self.evaluate, self.state = list(callbacks), evaluate, state
        self.completed = 0
        self._saved = -1
        max_time = getattr(cfg, "max_time", None)
        self.budget_s = parse_duration(max_time) if max_time is not None else None
        self._t0 = time.monotonic()
        self._eval_s = 0.0
        self.stopped_by_time = False
        self._has_eval = evaluate is not None

    def _save(self, step: int, extra: dict[str, Any]) -> None:
        if step != self._saved:
            self.checkpointer.save(step, {**extra, **self.state()})
            self._saved = step

    @property
    def train_seconds(self) -> float:
        """Seconds spent in the step loop so far, held-out evaluations left out."""
        return time.monotonic() - self._t0 - self._eval_s

    def evaluate_now(self, step: int) -> dict[str, float]:
        """Run the held-out evaluation (its time off the training clock), log it with ``train_time_s``.

        Returns ``{}`` (and logs nothing) when there is nothing held out.
        """
        if not self._has_eval:
            return {}
        t0 = time.monotonic()
        metrics = self.evaluate()
        self._eval_s += time.monotonic() - t0
        if metrics is None:
            self._has_eval = False
            return {}
        metrics = {**metrics, "train_time_s": round(self.train_seconds, 3)}
        self.logger.log(step, metrics, "eval")
        return metrics

    def after_step(self, step: int, metrics: dict[str, float], info: str = "") -> None:
        cfg = self.cfg
        self.completed = step
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
            self.evaluate_now(step)
        if cfg.save_every and step % cfg.save_every == 0:
            self._save(step, {"epoch": metrics["epoch"]} if "epoch" in metrics else {})
        self.logger.advance(step, info)
        for cb in self.callbacks:
            cb(step, metrics)

    def time_is_up(self, step: int) -> bool:
        """Whether to stop after ``step`` (not the last): the time budget is spent; the same answer on every process."""
        if self.budget_s is None or step >= self.cfg.max_steps:
            return False
        up = self.train_seconds >= self.budget_s
        accelerator = self.logger.accelerator
        if accelerator.num_processes > 1:
            import torch

            flag = torch.tensor(float(up), device=accelerator.device)
            up = bool(accelerator.reduce(flag, "max") > 0)
        if up and not self.stopped_by_time:
            self.stopped_by_time = True
            log.warning("max_time %s reached after step %d of %d (%.0f s of training): finishing the run there",
                        self.cfg.max_time, step, self.cfg.max_steps, self.train_seconds)
        return up

    @contextlib.contextmanager
    def guard(self, start: int, stopping: tuple[type[BaseException], ...] = (KeyboardInterrupt,)):
        """Run the step loop; on ``stopping`` errors checkpoint the finished steps, close the logger, re-raise."""
        self.completed = start
        self._t0, self._eval_s = time.monotonic(), 0.0
        try:
            yield self
        except stopping:
            # The step in flight was either fully applied or not at all: checkpoint what is finished.
            if self.completed > start:
                self._save(self.completed, {"interrupted": True})
            self.logger.close()
            raise

    def finish(self, start: int) -> None:
        """Checkpoint the last step (unless the schedule just did): ``max_steps``, or where ``max_time`` stopped."""
        if self.completed > start:
            extra = {"final": True, **({"stopped_by": "max_time"} if self.stopped_by_time else {})}
            self._save(self.completed, extra)
