"""``rewardhub score``: score the existing ``completion`` column of a dataset with any provider (no model).

A row that cannot be scored (no completion, a completion that is not text, a JSONL line that does not parse)
does not stop the others: it is written out with status ``error`` and the reason, and the summary counts it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewardhub.cli.common import console, load_reward_config, print_reward_summary, write_jsonl
from rewardhub.config import ScoreConfig, add_flags

#: Bad rows named in the summary (the output file has them all).
SHOWN_BAD_ROWS = 5


def add_parser(sub):
    p = sub.add_parser("score", help="score a dataset's completion column with a reward provider",
                       description="Score each row's `completion` (with its `prompt` if present) using a reward "
                       "provider; write every row's prompt, completion, reward, status and detail to a JSONL file "
                       "and print a summary. A row that cannot be scored is written with status `error` and "
                       "counted; the rest are scored.")
    add_flags(p, ScoreConfig)
    return p


@dataclass
class ScoreRow:
    """One input row: its index (0-based, over the rows), its line in a JSONL file, and what is wrong with it."""

    index: int
    row: Mapping[str, Any] | None
    line: int | None = None
    problem: str | None = None


def run(args) -> int:
    from rewardhub.out_dir import check_out_file
    from rewardhub.reward_resolution import build_reward
    from rewardhub.rewards import Reward, Sample, Status

    cfg = load_reward_config(ScoreConfig, args)
    output = Path(cfg.output)
    check_out_file(output)
    items = [_check_row(item) for item in read_score_rows(cfg.data, cfg.split, cfg.column_map)]
    good = [item for item in items if item.problem is None]
    bad = [item for item in items if item.problem is not None]
    rewards: dict[int, Reward] = {}
    provider = build_reward(cfg.reward, cfg.reward_args)
    try:
        for start in range(0, len(good), cfg.batch_size):
            batch = good[start:start + cfg.batch_size]
            samples = [Sample(_text(it.row.get("prompt")), _text(it.row["completion"]), dict(it.row)) for it in batch]
            rewards.update((it.index, r) for it, r in zip(batch, provider(samples)))
    finally:
        provider.close()
    for item in bad:
        rewards[item.index] = Reward(0.0, Status.ERROR, f"bad row: {item.problem}")
    write_jsonl(output, (_record(item, rewards[item.index]) for item in items))
    print_reward_summary(f"{provider.display_name} on {cfg.data}", provider, [rewards[it.index] for it in items],
                         output)
    if bad:
        named = ", ".join(_where(it) for it in bad[:SHOWN_BAD_ROWS]) + (", ..." if len(bad) > SHOWN_BAD_ROWS else "")
        console.print(f"{len(bad)} of {len(items)} rows could not be scored (written with status error and the "
                      f"reason): {named}. First: {_where(bad[0])}: {bad[0].problem}", soft_wrap=True, markup=False)
    return 0


def read_score_rows(data: str, split: str, column_map: Mapping[str, str]) -> list[ScoreRow]:
    """The rows to score. A JSONL file is read line by line (a bad line becomes a bad row, with its number,
    instead of refusing the file); anything else goes through :func:`rewardhub.data.load_rows`."""
    from rewardhub.data import load_rows
    from rewardhub.errors import DataError

    path = Path(data)
    if path.is_file() and path.suffix.lower() == ".jsonl":
        from rewardhub.data_files import is_blank_file, read_jsonl

        if is_blank_file(path):
            raise DataError(f"data file {path} is empty; it needs one JSON row per line")
        lines = read_jsonl(path)
        entries = sorted([(n, row, None) for n, row in lines.rows] + [(n, None, p) for n, p in lines.problems],
                         key=lambda e: e[0])
        items = [ScoreRow(i, row, n, problem) for i, (n, row, problem) in enumerate(entries)]
        _rename(items, column_map, path)
    else:
        ds = load_rows(data, split, None, column_map)
        items = [ScoreRow(i, row) for i, row in enumerate(ds)]
    if items and not any(isinstance(it.row, Mapping) and "completion" in it.row for it in items):
        columns = sorted({k for it in items if isinstance(it.row, Mapping) for k in it.row})
        raise DataError(f"score needs a `completion` column; no row has one (columns: {columns}). "
                        "Rename with --column-map src=dst.")
    return items


def _rename(items: list[ScoreRow], column_map: Mapping[str, str], path: Path) -> None:
    from rewardhub.errors import DataError

    if not column_map:
        return
    rows = [it.row for it in items if isinstance(it.row, Mapping)]
    missing = [src for src in column_map if not any(src in row for row in rows)]
    if missing:
        raise DataError(f"--column-map names columns {missing} that {path.name} lacks")
    for it in items:
        if isinstance(it.row, Mapping):
            it.row = {column_map.get(k, k): v for k, v in it.row.items()}


def _check_row(item: ScoreRow) -> ScoreRow:
    """The reason a row cannot be scored, if any: not an object, no completion, a completion that is not text."""
    if item.problem is not None:
        return item
    row = item.row
    if not isinstance(row, Mapping):
        item.problem = f"a row must be a JSON object, got {type(row).__name__}"
    elif row.get("completion") is None:
        item.problem = f"no `completion` (the row has columns {sorted(k for k, v in row.items() if v is not None)})"
    elif not _is_text(row["completion"]):
        item.problem = f"`completion` must be a string, got {type(row['completion']).__name__}"
    elif row.get("prompt") is not None and not (_is_text(row["prompt"]) or isinstance(row["prompt"], list)):
        item.problem = f"`prompt` must be a string or a list of messages, got {type(row['prompt']).__name__}"
    return item


def _is_text(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _where(item: ScoreRow) -> str:
    return f"row {item.index}" + (f" (line {item.line})" if item.line is not None else "")


def _record(item: ScoreRow, r) -> dict[str, Any]:
    """One output line: where the row was, what was scored (its prompt and completion as given, None when
    absent), then reward, status, detail (and the parts of a weighted reward)."""
    record: dict[str, Any] = {"index": item.index}
    if item.line is not None:
        record["line"] = item.line
    row = item.row if isinstance(item.row, Mapping) else {}
    record.update(prompt=row.get("prompt"), completion=row.get("completion"))
    if item.problem is not None:
        return {**record, "reward": None, "status": r.status.value, "detail": r.detail}
    return {**record, "reward": r.value, "status": r.status.value, "detail": r.detail,
            **({"parts": dict(r.parts)} if r.parts else {})}
