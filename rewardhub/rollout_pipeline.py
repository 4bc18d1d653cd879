"""Pipelined (one-step off-policy) RL: step n+1's rollout is sampled while step n scores and updates.

Synchronous RL leaves the sampler idle during scoring and the update, and the trainer idle during sampling.
``--async-rollouts`` moves sampling into a background worker (:class:`RolloutPipeline`) that holds its own
copy of the policy weights, so the two overlap; the price is that a rollout comes from weights a little
older than the trainer's (off-policy by a bounded number of updates, ``--max-staleness``).

The schedule is deterministic, a pure function of the step and ``max_staleness`` (:func:`next_version`), as
in prime-rl's ``async_level`` (there the rollout of step n comes from checkpoint ``n - k``): the worker runs
one rollout ahead, and the generator's weights are refreshed from the trainer's only when the next rollout
would otherwise be more than ``max_staleness`` updates old. With ``max_staleness=1`` that is after every
update (staleness 1 from step 2 on); with 2, every other update (staleness 1, 2, 1, 2, ...: half the weight
pushes, which matters for a server backend); with 0 the worker never runs ahead and the run equals the
synchronous loop exactly. Because nothing depends on timing, a pipelined run is reproducible and resumable.

Off-policy PPO: the ratio is taken against the *behaviour* policy, the log-probs the sampler reported under the
weights that produced the rollout (PipelineRL, prime-rl: the inference engine's log-probs), not a recompute
under the trainer's current weights. :func:`rewardhub.recipes.rl.rollout_forward` keeps them for that.

Backends: an in-process backend (:class:`~rewardhub.generation.TorchBackend`) gets the worker's own weight
copy as ``model``; a backend with the optional ``sync_weights(model, version)`` method (a server holding its
own weights) gets the trainer's policy pushed to it at each refresh instead, and no local copy is made.

Exact resume: in-flight rollouts are *checkpointed*, not regenerated. At a checkpoint after step k the rollout
for step k+1 already exists (or is waited for), sampled from weights the checkpoint no longer holds, so it
cannot be regenerated from the checkpoint's weights; it is small (token ids, masks, log-probs), so it is saved
(each process's own) with the sampling RNG state right after it, and, only when the following rollout would reuse
weights older than step k's (``max_staleness >= 2``), the generator's weights too. A step cut short after taking
its rollout (Ctrl-C twice) leaves that rollout to the checkpoint of the step before, so that resume is exact too.

Threads vs processes: a thread. Measured on the 2-core CPU this was built on (the bench's ``small`` model, one
torch thread each, machine shared): overlapping generation and update in two threads took 0.35 s per
generation+update pair against 0.33 s serial, in two processes 0.73-0.83 s, and a second process costs ~0.5 GB
of RSS (its own torch/transformers) and seconds of start-up. ``torch.set_num_threads`` is per thread under this
torch build's OpenMP backend (checked: a worker thread's setting leaves the main thread's as it was), so the
CPU threads are split between trainer and generator (:func:`split_threads`).
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from rewardhub.generation import GenerationBackend, Rollout, SamplingParams

log = logging.getLogger(__name__)
#: how long closing the pipeline waits for a generation in progress before leaving the (daemon) thread
JOIN_TIMEOUT_S = 30.0
ROLLOUT_FIELDS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "logprobs", "eos_reached")


def next_version(step: int, version: int, max_staleness: int) -> int | None:
    """The weights version that samples step ``step + 1``'s rollout, decided when step ``step`` starts.

    A version is a count of applied updates: the trainer holds version ``step - 1`` when step ``step`` starts
    and version ``step`` when step ``step + 1`` consumes that rollout, whose staleness is then ``step - v``.

    Args:
        step: the step starting now (>= 1).
        version: the weights version that sampled this step's rollout (what the generator holds).
        max_staleness: the bound (>= 0).

    Returns:
        ``version`` (no refresh) while ``step - version <= max_staleness``, else ``step - 1`` (refresh from
        the trainer now); None when ``max_staleness`` is 0: the rollout must wait for this step's update.
    """
    if max_staleness == 0:
        return None
    return version if step - version <= max_staleness else step - 1


def staleness(step: int, version: int) -> int:
    """Updates between the weights that sampled step ``step``'s rollout (``version``) and the trainer's."""
    return step - 1 - version


def split_threads(total: int) -> tuple[int, int]:
    """``(trainer, generator)`` torch threads out of ``total``: halves, the trainer getting the odd one; >= 1 each."""
    generator = max(1, total // 2)
    return max(1, total - generator), generator


@dataclass
class Sampled:
    """One rollout of the pipeline: the step it is for, the weights version that sampled it, and its result."""

    step: int
    version: int
    rollout: Rollout | None = None
    generator_state: torch.Tensor | None = None  #: the sampling RNG right after this rollout
    seconds: float = 0.0  #: the worker's time generating it
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class _Worker:
    """One daemon thread running generation jobs in order; errors are kept for the waiting caller."""

    def __init__(self, threads: int):
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, args=(threads,), name="rewardhub-rollouts", daemon=True)
        self._thread.start()

    def _loop(self, threads: int) -> None:
        torch.set_num_threads(threads)  # this thread's intra-op threads only (OpenMP: per thread)
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, fn = item
            t0 = time.perf_counter()
            try:
                job.rollout = fn()
            except BaseException as exc:  # handed to the main loop, which re-raises it
                job.error = exc
            finally:
                job.seconds = time.perf_counter() - t0
                job.done.set()

    def submit(self, job: Sampled, fn: Callable[[], Rollout]) -> Sampled:
        if not self._thread.is_alive():
            raise RuntimeError("the rollout worker has been shut down; no more rollouts can be sampled")
        self._jobs.put((job, fn))
        return job

    def wait(self, job: Sampled) -> Sampled:
        """The finished job; its error, if generation raised, re-raised here with the original message."""
        while not job.done.wait(0.5):  # short waits: signals reach the main thread, a dead worker is noticed
            if not self._thread.is_alive():
                raise RuntimeError(f"the rollout worker stopped before sampling step {job.step}")
        if job.error is not None:
            exc, job.error = job.error, None
            exc.add_note(f"(raised in the async_rollouts generation worker, sampling step {job.step})")
            raise exc
        return job

    def close(self, timeout: float) -> bool:
        """Ask the thread to stop after its current job; True when it did within ``timeout`` seconds."""
        self._jobs.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()


class RolloutPipeline:
    """Samples each step's rollout one step ahead in a worker thread, within the staleness bound.

    :meth:`take` is called at the start of every step, in order, and :meth:`done` after its update. The
    pipeline is registered with ``accelerator.register_for_checkpointing`` *after* ``RLCheckpoint`` (its
    sampling RNG state overrides the live one on load) and closed (:meth:`close`) when the run ends, however
    it ends.

    Args:
        backend: any :class:`~rewardhub.generation.GenerationBackend`; one with ``sync_weights`` gets weights
            pushed instead of a local copy.
        policy: the trainer's (unwrapped) policy model, read at each refresh.
        params, eos_ids, pad_token_id: as for ``backend.generate``.
        generator: the sampling RNG (only the worker uses it while the pipeline runs).
        max_staleness: the bound (:func:`next_version`).
        max_steps: the last step; no rollout is sampled past it.
        process_index: this process's rank (its entry in a checkpoint).
    """

    def __init__(self, backend: GenerationBackend, policy: Any, params: SamplingParams, eos_ids: list[int],
                 pad_token_id: int, generator: torch.Generator, max_staleness: int, max_steps: int,
                 process_index: int = 0):
        self.rank = process_index
        self.backend, self.policy, self.params = backend, policy, params
        self.eos_ids, self.pad_token_id, self.generator = eos_ids, pad_token_id, generator
        self.max_staleness, self.max_steps = max_staleness, max_steps
        self.pushes = callable(getattr(backend, "sync_weights", None))
        self.version: int | None = None  # the weights version the generator holds (None: none yet)
        self.finished = 0  # the last step whose update is applied: the trainer's weights version
        self._copy: Any = None  # the generator's own weights (in-process backends), made at the first refresh
        self._pushed: dict[str, torch.Tensor] | None = None  # what was last pushed (sync_weights, staleness >= 2)
        self._saved: tuple[int, dict[str, torch.Tensor]] | None = None  # generator weights from a checkpoint
        self._current: Sampled | None = None
        self._pending: Sampled | None = None
        self._restored: Sampled | None = None
        self._main_threads = torch.get_num_threads()
        total = self._main_threads
        self.threads = (total, 1) if self.pushes else split_threads(total)  # a server computes elsewhere
        torch.set_num_threads(self.threads[0])
        self._worker = _Worker(self.threads[1])

    # ---- the step loop ------------------------------------------------------------------------------------

    def take(self, step: int, prompts_for: Callable[[int], list[list[int]]]) -> Sampled:
        """Step ``step``'s rollout (waiting for it if need be); then starts sampling step ``step + 1``'s.

        Args:
            step: the step starting now; the previous one's update must be applied (:meth:`done`).
            prompts_for: a step's prompt token ids (a pure function of the step).
        """
        if step != self.finished + 1:
            raise RuntimeError(f"rollout for step {step} asked for after step {self.finished}: steps run in order")
        job = self._ready(step)
        if job is None:  # nothing sampled ahead (the first step, or max_staleness 0): sample from today's weights
            self._refresh(step - 1)
            job = self._start(step, prompts_for(step))
        self._current = job  # before waiting: a checkpoint taken while this step is cut short still finds it
        self._worker.wait(job)
        if step < self.max_steps:
            version = next_version(step, job.version, self.max_staleness)
            if version is not None:
                if version != self.version:
                    self._refresh(version)
                self._pending = self._start(step + 1, prompts_for(step + 1))
        return job

    @property
    def last(self) -> Sampled:
        """The rollout :meth:`take` handed over last."""
        if self._current is None:
            raise RuntimeError("no rollout taken yet")
        return self._current

    def done(self, step: int) -> None:
        """Step ``step``'s update is applied: the trainer's weights are now version ``step``."""
        self.finished = step

    def metrics(self, job: Sampled) -> dict[str, float]:
        """``rollout/staleness``, ``rollout/weights_version`` and the worker's generation time for ``job``."""
        return {"rollout/staleness": float(staleness(job.step, job.version)),
                "rollout/weights_version": float(job.version), "time/generation_worker": job.seconds}

    def close(self) -> None:
        """Stop the worker (bounded wait) and give the main thread its torch threads back."""
        if not self._worker.close(JOIN_TIMEOUT_S):
            log.warning("the rollout worker is still generating after %.0f s; leaving it (a daemon thread, it ends "
                        "with the process)", JOIN_TIMEOUT_S)
        self._current = self._pending = self._restored = self._copy = None
        torch.set_num_threads(self._main_threads)

    def _ready(self, step: int) -> Sampled | None:
        for name in ("_pending", "_restored"):
            job = getattr(self, name)
            if job is not None:
                setattr(self, name, None)
                if job.step != step:
                    raise RuntimeError(f"the pipeline holds the rollout of step {job.step}, not of step {step}")
                return job
        return None

    def _start(self, step: int, prompt_ids: list[list[int]]) -> Sampled:
        job = Sampled(step, self.version)
        model = self._copy if self._copy is not None else self.policy

        def sample() -> Rollout:
            rollout = self.backend.generate(model, prompt_ids, self.params, eos_token_id=self.eos_ids,
                                            pad_token_id=self.pad_token_id, generator=self.generator)
            job.generator_state = self.generator.get_state()
            return rollout

        return self._worker.submit(job, sample)

    @torch.no_grad()
    def _refresh(self, version: int) -> None:
        """Give the generator weights ``version``: the trainer's now, or those a checkpoint saved (worker idle)."""
        if version == self.finished:
            source: Any = self.policy
        elif self._saved is not None and self._saved[0] == version:
            source, self._saved = self._saved[1], None  # from here on the generator holds them
        else:
            raise RuntimeError(f"the generator needs weights version {version}, but the trainer holds "
                               f"{self.finished} and no checkpoint saved it")
        if self.pushes:
            if isinstance(source, dict):  # a checkpoint's generator weights: pushed through a scratch copy
                scratch = copy.deepcopy(self.policy)
                scratch.load_state_dict(source)
                source = scratch
            self.backend.sync_weights(source, version)
            if self.max_staleness >= 2:  # a checkpoint may need what the server holds
                self._pushed = _cpu_state(source)
        else:
            if self._copy is None:
                # requires_grad kept as the policy's: under this torch, frozen weights take another kernel path
                # whose log-probs differ in the last bits, and staleness 0 must equal the synchronous loop
                self._copy = copy.deepcopy(self.policy).eval()
                for p in self._copy.parameters():
                    p.grad = None
            values = source if isinstance(source, dict) else source.state_dict()
            for name, tensor in self._copy.state_dict().items():
                tensor.copy_(values[name])
        self.version = version

    # ---- checkpoints --------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The rollout of the step after the last finished one (waited for) and what resuming it needs."""
        from accelerate.utils import gather_object

        nxt = self.finished + 1
        job = None
        for held in (self._current, self._pending, self._restored):  # _current: a step stopped before its update
            if held is not None and held.step == nxt:
                job = self._worker.wait(held) if not held.done.is_set() else held
                break
        mine = None
        if job is not None and job.rollout is not None:
            mine = {"step": job.step, "version": job.version, "seconds": job.seconds,
                    "generator_state": job.generator_state,
                    "rollout": {f: getattr(job.rollout, f).detach().cpu() for f in ROLLOUT_FIELDS}}
        # every process's own rollout and RNG (accelerate writes the main process's file only); weights: the same
        state: dict[str, Any] = {"finished": self.finished, "in_flight": gather_object([mine])}
        if mine is not None and next_version(nxt, job.version, self.max_staleness) == job.version != self.finished:
            state["weights"] = {"version": job.version, "state": self._weights_of(job.version)}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.finished = int(state["finished"])
        flight = state["in_flight"][self.rank]
        if flight is not None:
            device = next(self.policy.parameters()).device
            rollout = Rollout(**{f: flight["rollout"][f].to(device) for f in ROLLOUT_FIELDS})
            job = Sampled(int(flight["step"]), int(flight["version"]), rollout, flight["generator_state"],
                          float(flight["seconds"]))
            job.done.set()
            self._restored = job
            self.generator.set_state(flight["generator_state"])
        weights = state.get("weights")
        if weights is not None:
            self._saved = (int(weights["version"]), weights["state"])

    def _weights_of(self, version: int) -> dict[str, torch.Tensor]:
        if self.version == version and self._copy is not None:
            return _cpu_state(self._copy)
        if self.version == version and self._pushed is not None:
            return self._pushed
        if self._saved is not None and self._saved[0] == version:
            return self._saved[1]
        raise RuntimeError(f"cannot checkpoint the generator's weights version {version}: it holds {self.version}")


def _cpu_state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
