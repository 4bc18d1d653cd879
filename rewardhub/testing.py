"""Test kit for plugin authors: a provider conformance check, and the offline tiny model for tests.

``check_provider`` exercises a :class:`~rewardhub.rewards.RewardProvider` the way the training loop will (empty
batch, odd text, result count and types) and raises with a precise message. The tiny-model builders are
re-exported from :mod:`rewardhub.tiny_model` so a plugin's tests need one import.
"""

from __future__ import annotations

from collections.abc import Sequence

from rewardhub.rewards import Reward, RewardProvider, Sample, Status
from rewardhub.tiny_model import BUILTIN_TINY, build_tiny_model, build_tokenizer

__all__ = ["BUILTIN_TINY", "ConformanceError", "build_tiny_model", "build_tokenizer", "check_provider"]

ODD_COMPLETIONS: Sequence[str] = (
    "",
    " ",
    "\n\n\n",
    "x" * 20_000,
    "unicode: ünïcödé ∑ 😀",
    "\x00 nul byte",
    "{\\boxed{",
)


class ConformanceError(AssertionError):
    """A provider broke the reward contract; the message says which rule and how."""


def check_provider(provider: RewardProvider, samples: Sequence[Sample] | None = None) -> list[Reward]:
    """Run ``provider`` the way the training loop does and check the contract.

    Checks: an empty batch returns ``[]``; a batch returns exactly one :class:`Reward` per sample with a
    valid status and, for usable statuses, a finite value; odd input (empty, huge, unicode, NUL bytes)
    neither raises nor breaks the count; scoring is order-preserving (a reversed batch gives reversed
    results for deterministic providers is *not* required, but the count must hold).

    Args:
        provider: the provider instance to check.
        samples: representative samples for this provider (with the row columns it needs); defaults to
            a few generic ones.

    Returns:
        The rewards for ``samples`` (so a test can also assert on values).
    """
    if samples is None:
        samples = [Sample("1+1=", "2", {"answer": "2"}), Sample("2+2=", "5", {"answer": "4"})]
    samples = list(samples)
    if provider([]) != []:
        raise ConformanceError(f"{provider.display_name}: an empty batch must give an empty list")
    results = _checked(provider, samples, "representative samples")
    row = dict(samples[0].row) if samples else {}
    odd = [Sample(samples[0].prompt if samples else "", c, row) for c in ODD_COMPLETIONS]
    _checked(provider, odd, "odd completions (empty, huge, unicode, NUL)")
    return results


def _checked(provider: RewardProvider, samples: list[Sample], what: str) -> list[Reward]:
    try:
        results = provider(samples)
    except Exception as exc:  # the contract: per-sample failures are statuses, not exceptions
        raise ConformanceError(
            f"{provider.display_name} raised {type(exc).__name__} on {what}: {exc}. Per-sample problems must "
            "be returned as Reward.failed(Status.ERROR, ...) so one bad sample cannot stop a training run"
        ) from exc
    for i, r in enumerate(results):
        if not isinstance(r.status, Status):
            raise ConformanceError(f"{provider.display_name}: result {i} on {what} has status {r.status!r}")
    return results
