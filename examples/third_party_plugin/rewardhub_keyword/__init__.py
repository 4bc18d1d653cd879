"""Example plugin: reward completions that contain chosen keywords; a verifier written as a plain function."""

from __future__ import annotations

from rewardhub import Reward, RewardProvider, Status, hookimpl, verifier


class KeywordReward(RewardProvider):
    """Share of the given keywords that appear in the completion (case-insensitive)."""

    def __init__(self, words: list[str] = ("please", "thank"), case_sensitive: bool = False):
        super().__init__()
        if not words:
            raise ValueError("keyword: give at least one word, e.g. --reward-arg words=please,thanks")
        self.case_sensitive = case_sensitive
        self.words = [w if case_sensitive else w.lower() for w in words]

    def score(self, samples):
        out = []
        for s in samples:
            text = s.completion if self.case_sensitive else s.completion.lower()
            hits = sum(w in text for w in self.words)
            out.append(Reward(hits / len(self.words), Status.OK if hits else Status.WRONG))
        return out


@verifier("ends_with_period")
def ends_with_period(completion: str, row: dict) -> bool:
    """True when the completion ends with a full stop."""
    return completion.rstrip().endswith(".")


@hookimpl
def rewardhub_register_rewards(register):
    register("keyword", KeywordReward, description="share of chosen keywords present in the completion")
