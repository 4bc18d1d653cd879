"""The reward contract: what a reward provider receives, what it returns, and how the core calls it.

A provider scores a *batch* of :class:`Sample` and returns one :class:`Reward` per sample. A reward is a
value *and* a status, so an infrastructure failure (a judge that timed out, a sandbox that crashed) is never
mistaken for a legitimately bad answer: the training loop masks ``timeout``/``error`` samples out of the
update instead of teaching the policy that its answer was worth 0.

The core never calls ``provider.score`` directly; it calls the provider (``provider(samples)``), which
validates the result (count and types) and updates the per-status counters that ``metrics()`` reports.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from rewardhub.errors import RewardProviderError


class Status(str, Enum):
    """Outcome of scoring one sample.

    ``ok``, ``wrong`` and ``no_answer`` are *answers about the completion* and train the policy;
    ``timeout``, ``error`` and ``pending`` are *failures of the reward source* and are masked out.
    """

    OK = "ok"
    WRONG = "wrong"
    NO_ANSWER = "no_answer"
    TIMEOUT = "timeout"
    ERROR = "error"
    PENDING = "pending"

    @property
    def usable(self) -> bool:
        """Whether a reward with this status may train the policy."""
        return self in (Status.OK, Status.WRONG, Status.NO_ANSWER)


FAILURE_STATUSES = frozenset({Status.TIMEOUT, Status.ERROR, Status.PENDING})


@dataclass(frozen=True)
class Sample:
    """One completion to score, with everything a provider may need.

    Args:
        prompt: the prompt as the policy saw it (rendered text).
        completion: the generated text, without the prompt and without special tokens.
        row: the dataset row the prompt came from (gold ``answer``, ``tests``, metadata, ...).
        completion_ids: the sampled token ids of the completion (up to and including EOS) when the caller
            sampled it token by token (RL rollouts); None where only the text is known (held-out evaluation,
            ``rewardhub score``, DPO). TRL-style reward functions receive them as ``completion_ids``.
    """

    prompt: str
    completion: str
    row: Mapping[str, Any] = field(default_factory=dict)
    completion_ids: Sequence[int] | None = None


@dataclass(frozen=True)
class Reward:
    """The score of one sample.

    Args:
        value: the scalar reward. For failure statuses it is ignored by the loop (kept at 0.0 by convention).
        status: see :class:`Status`.
        detail: a short human-readable reason (an exception text, "timeout after 5s", ...).
        parts: per-component values for composite rewards (logged by the loop).
    """

    value: float
    status: Status = Status.OK
    detail: str = ""
    parts: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.status, Status):
            object.__setattr__(self, "status", Status(self.status))
        if not isinstance(self.value, (int, float)) or isinstance(self.value, bool):
            object.__setattr__(self, "value", float(self.value))
        if self.status.usable and not math.isfinite(self.value):
            raise ValueError(f"reward value must be finite for status {self.status.value!r}, got {self.value}")

    @property
    def usable(self) -> bool:
        return self.status.usable

    @classmethod
    def failed(cls, status: Status | str, detail: str) -> Reward:
        """A failure of the reward source (``timeout``, ``error`` or ``pending``) for one sample."""
        status = Status(status)
        if status.usable:
            raise ValueError(f"Reward.failed needs a failure status, got {status.value!r}")
        return cls(0.0, status, detail)


@dataclass(frozen=True)
class PreferencePair:
    """A preference: ``chosen`` is better than ``rejected`` as a reply to ``prompt``.

    ``margin`` (optional) says by how much, for margin-aware Bradley-Terry losses.
    """

    prompt: str
    chosen: str
    rejected: str
    margin: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


class RewardProvider(ABC):
    """Base class of every reward source.

    Subclasses implement :meth:`score`. Options arrive as keyword arguments of ``__init__``, typed with
    annotations: the core coerces ``--reward-arg key=value`` strings to those types and rejects unknown
    keys, so a provider declares its options simply by writing its constructor.

    Example::

        class Shorter(RewardProvider):
            def __init__(self, limit: int = 50):
                super().__init__()
                self.limit = limit

            def score(self, samples):
                return [Reward(1.0 if len(s.completion) <= self.limit else 0.0) for s in samples]
    """

    #: registered name, set when the provider is built (used in logs and error messages)
    name: str = ""
    #: True when status ``ok`` means "correct" (verifiers, exact match), so evaluation reports an accuracy
    reports_correctness: ClassVar[bool] = False

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()

    @abstractmethod
    def score(self, samples: Sequence[Sample]) -> list[Reward]:
        """Score a batch; return exactly one :class:`Reward` per sample, in order."""

    def compare(self, prompt: str, a: str, b: str, row: Mapping[str, Any] | None = None) -> float:
        """Probability that completion ``a`` beats ``b``.

        The default scores both and applies the Bradley-Terry link ``sigmoid(r_a - r_b)``; providers with a
        native pairwise judgement (an LLM judge, a human) override it. Raises if either score failed.
        """
        ra, rb = self([Sample(prompt, a, row or {}), Sample(prompt, b, row or {})])
        for r in (ra, rb):
            if not r.usable:
                raise RewardProviderError(
                    f"{self.display_name} could not score a completion for comparison "
                    f"({r.status.value}: {r.detail})"
                )
        return 1.0 / (1.0 + math.exp(-(ra.value - rb.value)))

    def preference_pairs(self) -> Iterable[PreferencePair]:
        """Stored preferences, for providers that keep them (e.g. a human-feedback store)."""
        raise NotImplementedError(
            f"reward provider {self.display_name} stores no preference pairs; use a dataset with "
            "prompt/chosen/rejected columns, or a provider that keeps preferences (e.g. --reward=human)"
        )

    def metrics(self) -> dict[str, float]:
        """Counters the loop logs, e.g. ``{"status/ok": 120, "status/timeout": 2}``. Extend with super()."""
        return {f"status/{k}": float(v) for k, v in sorted(self.counters.items())}

    def close(self) -> None:  # noqa: B027 - optional hook, intentionally empty
        """Release pools, connections or models. Called once when the run ends."""

    @property
    def display_name(self) -> str:
        return repr(self.name or type(self).__name__)

    def __call__(self, samples: Sequence[Sample]) -> list[Reward]:
        """Score ``samples`` and check the result: one ``Reward`` per sample, nothing else."""
        samples = list(samples)
        if not samples:
            return []
        results = self.score(samples)
        results = list(results) if results is not None else []
        if len(results) != len(samples):
            raise RewardProviderError(
                f"reward provider {self.display_name} returned {len(results)} results for {len(samples)} "
                "samples; score() must return exactly one Reward per sample, in order"
            )
        for i, r in enumerate(results):
            if not isinstance(r, Reward):
                raise RewardProviderError(
                    f"reward provider {self.display_name} returned {type(r).__name__} for sample {i}; "
                    "score() must return rewardhub.Reward objects (e.g. Reward(1.0) or Reward.failed(...))"
                )
            self.counters[r.status.value] += 1
        return results


def as_reward(value: Any, source: str) -> Reward:
    """Turn what a plain-Python reward function returned into a :class:`Reward`.

    Accepts a ``Reward``, a bool (True -> 1.0 ok, False -> 0.0 wrong), an int or a float. ``None`` means the
    function had no answer for this sample (``no_answer``, value 0).
    """
    if isinstance(value, Reward):
        return value
    if isinstance(value, bool):
        return Reward(1.0, Status.OK) if value else Reward(0.0, Status.WRONG)
    if value is None:
        return Reward(0.0, Status.NO_ANSWER)
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            return Reward.failed(Status.ERROR, f"{source} returned a non-finite value {value!r}")
        return Reward(float(value))
    return Reward.failed(
        Status.ERROR, f"{source} returned {type(value).__name__}; expected float, bool, None or Reward"
    )


def first_failure(rewards: Iterable[Reward]) -> str | None:
    """``"timeout: after 5s"`` for the first failed reward, None when every reward is usable."""
    first = next((r for r in rewards if not r.usable), None)
    return f"{first.status.value}: {first.detail}" if first else None


def too_many_failures(failed: int, total: int, max_rate: float) -> bool:
    """Whether ``failed`` of ``total`` is past ``max_rate`` (strictly: 2 of 8 at 0.25 is not, 3 of 8 is)."""
    return failed > 0 and failed / max(total, 1) > max_rate


def check_failure_rate(provider: RewardProvider, failed: int, total: int, max_rate: float, step: int,
                       first: str | None = None, unit: str = "samples") -> None:
    """Stop the run (``RewardProviderError``) when ``failed`` of ``total`` rewards of one step is past ``max_rate``.

    Recipes call it with counts summed over every process, so every process decides the same. ``first`` is
    the first failure's text (:func:`first_failure`); ``unit`` names what was judged (``samples``, or
    ``comparisons`` for pairwise ranking).
    """
    if not too_many_failures(failed, total, max_rate):
        return
    why = f"; first failure: {first}" if first else ""
    raise RewardProviderError(
        f"reward provider {provider.display_name} failed on {int(failed)} of {int(total)} {unit} at step "
        f"{step} ({failed / total:.0%} > max_failure_rate {max_rate:g}){why}. Fix the reward "
        "source (timeouts, server, sandbox) or raise --max-failure-rate; finished steps are checkpointed.")
