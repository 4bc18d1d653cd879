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


def first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


def exact_match_accuracy(model, tokenizer, rows, max_new_tokens: int, batch_size: int = 64) -> float:
    """Share of rows whose greedy completion's first line equals the ``answer`` column."""
    _, completions = generate_completions(model, tokenizer, rows, max_new_tokens, batch_size=batch_size)
    hits = sum(first_line(c) == str(a).strip() for c, a in zip(completions, rows["answer"]))
    return hits / max(len(completions), 1)


def score_rows(provider: RewardProvider, prompts: list[str], completions: list[str], rows) -> list[Reward]:
    """Score completions in batches of rows (each ``Sample`` carries its full dataset row)."""
    samples = [Sample(p, c, dict(r)) for p, c, r in zip(prompts, completions, rows)]
    return provider(samples)
