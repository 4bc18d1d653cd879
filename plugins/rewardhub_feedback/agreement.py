"""How much annotators agree: per item, overall, and chance-corrected (Fleiss' and Cohen's kappa).

An *item* is one thing people judged: a pair of replies (categories: A preferred, B preferred, tie, both bad)
or one reply to rate (categories: the score values, compared exactly, as nominal labels; kappa does not give
partial credit for a 4 against a 5). Only items judged by two or more annotators say anything about agreement;
each annotator gives one judgement per item (the store replaces an annotator's earlier label).

- **Majority share** of an item: the share of its annotators in the largest category (3 of 4 agree: 0.75).
  The overall figure is its mean over items.
- **Fleiss' kappa** over all items, in the form that allows a different number of annotators per item:
  ``P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1))`` (the share of agreeing annotator pairs on item i),
  ``P = mean_i P_i``, ``p_j = sum_i n_ij / sum_i n_i``, ``P_e = sum_j p_j^2``, ``kappa = (P - P_e) / (1 - P_e)``.
  With the same number of annotators on every item this is Fleiss (1971) exactly.
- **Cohen's kappa** for each pair of annotators, over the items both judged:
  ``(p_o - p_e) / (1 - p_e)``, ``p_o`` the share of those items where they agree, ``p_e = sum_k q_k r_k`` from
  each one's own category shares.

A kappa is None (undefined) when chance agreement is 1 (everyone used one category throughout).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any


def majority_share(counts: Mapping[Hashable, int]) -> float:
    n = sum(counts.values())
    return max(counts.values()) / n


def fleiss_kappa(items: Sequence[Mapping[Hashable, int]]) -> float | None:
    """Fleiss' kappa of per-item category counts (items with fewer than 2 annotators are ignored)."""
    items = [c for c in items if sum(c.values()) >= 2]
    if not items:
        return None
    p_items = []
    totals: Counter = Counter()
    for counts in items:
        n = sum(counts.values())
        p_items.append((sum(v * v for v in counts.values()) - n) / (n * (n - 1)))
        totals.update(counts)
    p_bar = sum(p_items) / len(p_items)
    grand = sum(totals.values())
    p_e = sum((v / grand) ** 2 for v in totals.values())
    return None if p_e >= 1 else (p_bar - p_e) / (1 - p_e)


def cohen_kappa(pairs: Sequence[tuple[Hashable, Hashable]]) -> float | None:
    """Cohen's kappa of two annotators' labels on the same items, ``[(label_1, label_2), ...]``."""
    if not pairs:
        return None
    n = len(pairs)
    p_o = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    p_e = sum(first[k] * second[k] for k in first) / (n * n)
    return None if p_e >= 1 else (p_o - p_e) / (1 - p_e)


def summarise(labels: Mapping[Hashable, Mapping[str, Hashable]]) -> dict[str, Any]:
    """Agreement over ``{item: {annotator: category}}``; only items with 2+ annotators count.

    Returns ``items`` (how many), ``mean_majority_share``, ``fleiss_kappa`` and ``cohen_kappa``: one entry per
    pair of annotators who judged at least one item in common, ``{"annotators", "items", "kappa"}``.
    """
    shared = {item: votes for item, votes in labels.items() if len(votes) >= 2}
    counts = [Counter(votes.values()) for votes in shared.values()]
    out: dict[str, Any] = {
        "items": len(shared),
        "mean_majority_share": (sum(majority_share(c) for c in counts) / len(counts)) if counts else None,
        "fleiss_kappa": fleiss_kappa(counts),
    }
    by_pair: dict[tuple[str, str], list[tuple[Hashable, Hashable]]] = {}
    for votes in shared.values():
        for x, y in combinations(sorted(votes), 2):
            by_pair.setdefault((x, y), []).append((votes[x], votes[y]))
    out["cohen_kappa"] = [{"annotators": [x, y], "items": len(p), "kappa": cohen_kappa(p)}
                          for (x, y), p in sorted(by_pair.items())]
    return out


def per_item(labels: Mapping[Hashable, Mapping[str, Hashable]]) -> Iterable[tuple[Hashable, Counter, float]]:
    """(item, category counts, majority share) for each item with 2+ annotators."""
    for item, votes in labels.items():
        if len(votes) >= 2:
            counts = Counter(votes.values())
            yield item, counts, majority_share(counts)
