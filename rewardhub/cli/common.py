"""Helpers shared by the subcommands: console output and result files."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from rewardhub.console import console, number


def print_table(title: str, columns: list[str], rows: Iterable[Iterable[Any]]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for row in rows:
        table.add_row(*(number(v) for v in row))
    console.print(table)


def print_summary(title: str, stats: Mapping[str, float]) -> None:
    print_table(title, ["metric", "value"], stats.items())


def print_reward_summary(title: str, provider: Any, rewards: Sequence[Any], output: Path) -> None:
    """``summarize(rewards)`` as a table (with ``accuracy`` for a provider that reports correctness), then where
    the per-row results went: how ``score`` and ``eval`` end."""
    from rewardhub.reward_resolution import reward_stats

    print_summary(title, reward_stats(provider, rewards))
    console.print(f"per-row results: {output}")


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
    tmp.replace(path)  # never leave a half-written result file under the final name
    return path


def print_outputs(out: str | Path, final: Mapping[str, Any]) -> None:
    """Where a training run's results went: metrics, the newest checkpoint, sampled completions, the model."""
    out = Path(out)
    from rewardhub.engine import checkpoint_dirs

    checkpoints = checkpoint_dirs(out)
    parts = [f"metrics: {out / 'metrics.jsonl'}"]
    if checkpoints:
        parts.append(f"checkpoint: {checkpoints[0]}")
    if (out / "completions").is_dir():
        parts.append(f"sampled completions: {out / 'completions'}/")
    parts.append(f"model: {final.get('model_path', out / 'model')}")
    console.print("; ".join(parts), soft_wrap=True, highlight=False, markup=False)


def load_reward_config(cls: type, args: Any, presets: Mapping | None = None) -> Any:
    """The command's config from its flags, with its ``--verifier`` files registered and its ``--reward`` checked
    (when given) before any model or dataset is loaded: :func:`rewardhub.api.load_settings` on the flags."""
    from rewardhub.api import load_settings

    values = dict(vars(args))
    config = values.pop("config", None)
    return load_settings(cls, values, config, presets)
