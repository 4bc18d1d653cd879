"""The ``human`` reward provider: rewards and preferences from people, read from a feedback store.

- DPO (``--algo dpo --reward=human``; ``--pairs auto`` takes a store first):
  :meth:`HumanFeedbackReward.preference_pairs` gives the store's comparisons, one pair per labelled
  (prompt, A, B) in the majority's direction.
- PPO/GRPO/RLOO (``--reward=human``, human in the loop): :meth:`score` returns the mean rating people gave
  that exact (prompt, completion), normalised to [0, 1] by the store's scale (so KL coefficients and
  learning rates do not depend on whether annotators rate 1..5 or 1..10; the raw mean is in the reward's
  ``detail``). A completion nobody rated yet is put in the labelling queue and returned as ``pending``, a
  failure the loop masks out, never a silent 0. With ``wait`` the provider waits that long for annotators
  (polling the store) before giving up on the batch's unlabelled samples.
- Online DPO ranked by compare (``--pairs online --rank-with compare``): :meth:`compare` uses the people's
  votes on that pair (a tie or both-bad judgement counts half for each side: a person said neither is
  better), else their ratings of both, else queues the pair and raises (the loop counts it as a failed
  comparison and skips the prompt), rather than inventing a 0.5.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rewardhub.errors import ConfigError, DataError, RewardProviderError
from rewardhub.rewards import PreferencePair, Reward, RewardProvider, Sample, Status

from .store import FeedbackStore

#: The default store: next to where you run, like the runs you train. A cache directory would be the wrong
#: home for labels people spent hours on.
DEFAULT_DB = "feedback.db"
POLL_S = 0.5


class HumanFeedbackReward(RewardProvider):
    """Rewards from human ratings and preference pairs from human comparisons, stored in SQLite.

    Args:
        db: the feedback store file (default ``./feedback.db``). Created when missing only if ``enqueue`` is on
            (a trainer may start an empty store for annotators to fill); otherwise a missing file is an error.
        min_score, max_score: the rating scale; unset uses the store's (1..5 for a new store). Values must
            match an existing store's scale. Rewards are normalised: ``(mean - min) / (max - min)``.
        enqueue: put completions (and, for ``compare``, pairs) nobody labelled yet in the labelling queue.
        wait: seconds to wait in each call for annotators to label what is missing (0: do not wait).
    """

    def __init__(self, db: str = DEFAULT_DB, min_score: float | None = None, max_score: float | None = None,
                 enqueue: bool = True, wait: float = 0.0):
        super().__init__()
        if not wait >= 0:
            raise ConfigError(f"human: wait must be >= 0 seconds, got {wait}")
        if not Path(db).expanduser().exists() and not enqueue:
            raise ConfigError(f"human: no feedback store at {db}; import pairs with `rewardhub feedback import "
                              f"PAIRS.jsonl --db {db}`, label on `rewardhub feedback serve --db {db}`, or set "
                              "enqueue=true to start an empty store")
        try:
            self.store = FeedbackStore(db, min_score=min_score, max_score=max_score)
        except DataError as exc:
            raise ConfigError(f"human: {exc}") from None
        self.enqueue, self.wait = enqueue, float(wait)
        self.hits = self.pending = 0
        self.queued: set[int] = set()  # ids of the queue items this run asked for

    # -- scores (PPO/GRPO/RLOO) ------------------------------------------------------------------------------

    def score(self, samples: Sequence[Sample]) -> list[Reward]:
        keys = [(s.prompt, s.completion) for s in samples]
        try:
            found = self.store.ratings_for(keys)
            missing = [k for k in dict.fromkeys(keys) if k not in found]
            bad = self._queue_missing(missing) if missing else {}
            deadline = time.monotonic() + self.wait
            while self.wait and len(found) < len(set(keys)) - len(bad) and time.monotonic() < deadline:
                time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
                found.update(self.store.ratings_for([k for k in missing if k not in found and k not in bad]))
        except sqlite3.Error as exc:  # a locked or broken file fails this batch, not the run
            return [Reward.failed(Status.ERROR, f"feedback store {self.store.path}: {exc}") for _ in samples]
        out = []
        for key in keys:
            if key in found:
                mean, n = found[key]
                self.hits += 1
                out.append(Reward(self.normalise(mean), Status.OK,
                                  f"mean of {n} human rating(s): {mean:g} on {self.scale_text}"))
            elif key in bad:
                out.append(Reward.failed(Status.ERROR, bad[key]))
            else:
                self.pending += 1
                out.append(Reward.failed(Status.PENDING, self._pending_detail()))
        return out

    def _pending_detail(self) -> str:
        where = "queued for annotators" if self.enqueue else "not queued (enqueue=false)"
        waiting = f"waited {self.wait:g}s" if self.wait else "--reward-arg wait=SECONDS waits for labels"
        return (f"no human rating yet; {where} in {self.store.path} (label them on `rewardhub feedback serve "
                f"--db {self.store.path}`; {waiting})")

    def _queue_missing(self, missing: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """Queue unrated samples (when ``enqueue``); returns the ones that cannot be labelled, with why."""
        bad = {k: "empty prompt: a human cannot judge a completion without the prompt it answers"
               for k in missing if not k[0].strip()}
        todo = [k for k in missing if k not in bad]
        if self.enqueue and todo:
            self.queued.update(self.store.enqueue_many([(p, [c]) for p, c in todo], source="trainer"))
        return bad

    def normalise(self, value: float) -> float:
        lo, hi = self.store.scale
        return (value - lo) / (hi - lo)

    @property
    def scale_text(self) -> str:
        return f"{self.store.scale[0]:g}..{self.store.scale[1]:g}"

    # -- comparisons (online DPO ranked by compare) ----------------------------------------------------------

    def compare(self, prompt: str, a: str, b: str, row: Mapping[str, Any] | None = None) -> float:
        """P(``a`` beats ``b``): the share of annotators who preferred ``a``; else 1/0/0.5 from the mean ratings
        of both; else the pair is queued (when ``enqueue``), waited for (``wait``), and RewardProviderError is
        raised, so an unlabelled pair is a counted failure instead of a made-up tie."""
        if a == b:
            return 0.5
        deadline = time.monotonic() + self.wait
        queued = False
        while True:
            p = self._judged(prompt, a, b)
            if p is not None:
                self.hits += 1
                return p
            if self.enqueue and not queued and prompt.strip():
                self.queued.add(self.store.enqueue(prompt, [a, b], source="trainer"))
                queued = True
            if time.monotonic() >= deadline:
                break
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        self.pending += 1
        raise RewardProviderError(f"{self.display_name}: no human judgement yet for this pair of completions"
                                  f"{' (queued for annotators)' if queued else ''}")

    def _judged(self, prompt: str, a: str, b: str) -> float | None:
        wins_a, wins_b, neither = self.store.judgements(prompt, a, b)
        if wins_a + wins_b + neither:
            return (wins_a + neither / 2) / (wins_a + wins_b + neither)
        ratings = self.store.ratings_for([(prompt, a), (prompt, b)])
        if len(ratings) == 2:
            ra, rb = ratings[(prompt, a)][0], ratings[(prompt, b)][0]
            return 1.0 if ra > rb else 0.0 if ra < rb else 0.5
        return None

    # -- stored preferences (DPO) ----------------------------------------------------------------------------

    def preference_pairs(self) -> Iterable[PreferencePair]:
        """The store's comparisons as pairs (majority direction; evenly split votes left out).

        Ties and both-bad judgements are left out: they carry no preference, so DPO has nothing to learn from
        them (and its loss has no way to say "equally good").

        Conversational comparisons come back with message-list fields (TRL's format), which DPO renders with
        the chat template.
        """
        pairs = self.store.pairs()
        if not pairs:
            stats = self.store.stats()
            raise DataError(f"feedback store {self.store.path} holds no preference pairs ({stats['comparisons']} "
                            f"comparisons, {stats['split_pairs']} with evenly split votes, {stats['ties']} ties and "
                            f"{stats['both_bad']} both-bad judgements, which carry no preference); import some with "
                            f"`rewardhub feedback import PAIRS.jsonl --db {self.store.path}` or label pairs on "
                            f"`rewardhub feedback serve --db {self.store.path}`")
        return pairs

    def metrics(self) -> dict[str, float]:
        m = super().metrics()
        m.update({"labelled": float(self.hits), "pending": float(self.pending),
                  "enqueued": float(len(self.queued))})
        with contextlib.suppress(sqlite3.Error):  # metrics must not stop a run
            m["queue_open"] = float(self.store.queue_counts()["open"])
        return m

    def close(self) -> None:
        self.store.close()
