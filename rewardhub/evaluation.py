"""Held-out evaluation: generate completions for prompts, then score them (exact match or any provider)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rewardhub.data import load_rows, parse_data_spec, render_prompt
from rewardhub.plugins import build_registry
from rewardhub.rewards import Reward, RewardProvider, Sample


def load_eval_rows(data: str, eval_data: str | None, data_args: Mapping[str, Any] | None,
                   column_map: Mapping[str, str] | None, size: int):
    """The held-out rows: ``eval_data`` if given, else the test split of a task, else None (no evaluation)."""
    if eval_data:
        is_task = parse_data_spec(eval_data)[0] in build_registry().entries["task"]
        rows = load_rows(eval_data, "test", data_args if is_task else None, column_map)
    else:
        name, _ = parse_data_spec(data)
        if name not in build_registry().entries["task"]:
            return None
        rows = load_rows(f"{name}:test", None, data_args, column_map)
    return rows.select(range(min(size, len(rows)))) if size else rows


def generate_completions(model, tokenizer, rows, max_new_tokens: int, temperature: float = 0.0,
                         batch_size: int = 64, seed: int = 0) -> tuple[list[str], list[str]]:
    """(rendered prompts, completions) for every row's ``prompt`` (greedy unless ``temperature > 0``)."""
    import torch

    from rewardhub.generation import SamplingParams, generate_text

    prompts = [render_prompt(p, tokenizer) for p in rows["prompt"]]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    generator = torch.Generator().manual_seed(seed)
    completions = generate_text(model, tokenizer, prompts, params, batch_size=batch_size, generator=generator)
    return prompts, completions


def score_greedy(model, tokenizer, rows, provider: RewardProvider, max_new_tokens: int, batch_size: int = 64,
                 seed: int = 0) -> dict[str, float]:
    """Held-out metrics every recipe reports: greedy completions of ``rows`` scored by ``provider``.

    Returns ``reward_mean`` (over usable rewards), ``n``, ``frac_failed`` (timeouts/errors, left out of the
    mean) and, for a provider that reports correctness (the verifier, exact match), ``accuracy``: the share of
    rows scored ``ok``, failures counted as not correct.
    """
    import statistics

    from rewardhub.rewards import Status

    prompts, completions = generate_completions(model, tokenizer, rows, max_new_tokens, batch_size=batch_size,
                                                seed=seed)
    rewards = score_rows(provider, prompts, completions, rows)
    usable = [r.value for r in rewards if r.usable]
    out = {"reward_mean": statistics.fmean(usable) if usable else float("nan"), "n": float(len(rewards)),
           "frac_failed": 1 - len(usable) / max(len(rewards), 1)}
    if provider.reports_correctness:
        out["accuracy"] = sum(r.status is Status.OK for r in rewards) / max(len(rewards), 1)
    return out


def score_rows(provider: RewardProvider, prompts: list[str], completions: list[str], rows) -> list[Reward]:
    """Score completions in batches of rows (each ``Sample`` carries its full dataset row)."""
    samples = [Sample(p, c, dict(r)) for p, c, r in zip(prompts, completions, rows)]
    return provider(samples)
