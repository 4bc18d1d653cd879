"""What a run directory holds, read for the report: metrics rows, ``run.json``, the sampled completions.

``metrics.jsonl`` has one JSON object per line, ``{"step", "kind": "train" | "eval", "time", ...metrics}``
(:class:`rewardhub.engine.MetricsLogger`). A run being written, or one killed mid-write, can end in a torn
line: it is left out with a note. A malformed line anywhere else means the file was damaged or edited, and
the report stops there, naming the line.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewardhub.errors import DataError

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
RUN_FILE = "run.json"
COMPLETIONS_DIR = "completions"
#: keys of a metrics row that are not metrics
ROW_FIELDS = ("step", "kind", "time")


@dataclass
class Series:
    """One metric over the run: ``values[i]`` was logged at ``steps[i]``."""

    key: str
    kind: str
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def last(self) -> float:
        return self.values[-1]


def read_metrics(path: str | Path, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``, in file order.

    Blank lines are skipped. A torn last line (a run still writing, or killed mid-write) is skipped with a
    warning, appended to ``notes`` when given.

    Raises:
        DataError: the file is missing or unreadable, holds no rows, or a line other than the last is not a
            metrics row (the message names the line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist: no metrics were logged there (is this a rewardhub run directory?)")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(f"{path} cannot be read: {exc}") from exc
    lines = text.split("\n")
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    rows = []
    for position, (number, line) in enumerate(numbered):
        problem = _row_problem(line)
        if problem is None:
            rows.append(json.loads(line))
            continue
        if position == len(numbered) - 1:
            note = (f"{path}: the last line (line {number}) is torn ({problem}), as a run still writing or killed "
                    "mid-write leaves it; it is left out")
            log.warning("%s", note)
            if notes is not None:
                notes.append(note)
            continue
        raise DataError(f"{path}, line {number}: {problem}; only the last line may be torn (a run killed "
                        f"mid-write), so this file was damaged or edited: fix or delete line {number}")
    if not rows:
        raise DataError(f"{path} holds no metrics rows yet: the run has not logged a step "
                        f"(rows are written every --log-every steps)")
    return rows


def _row_problem(line: str) -> str | None:
    """Why ``line`` is not a metrics row, or None when it is one."""
    try:
        row = json.loads(line)
    except ValueError as exc:
        return f"not JSON ({exc.msg}, column {exc.colno})"
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    step = row.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return "no integer 'step'"
    if not isinstance(row.get("kind", "train"), str):
        return "'kind' is not a string"
    return None


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what can be plotted. NaN is logged as null and never plotted."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def kind_of(row: Mapping[str, Any]) -> str:
    return row.get("kind", "train")


def metric_keys(rows: Iterable[Mapping[str, Any]], kind: str = "train") -> list[str]:
    """Every metric name that rows of ``kind`` logged with a number, in first-seen order."""
    keys: dict[str, None] = {}
    for row in rows:
        if kind_of(row) == kind:
            for k, v in row.items():
                if k not in ROW_FIELDS and is_number(v):
                    keys.setdefault(k, None)
    return list(keys)


def series(rows: Sequence[Mapping[str, Any]], key: str, kind: str = "train") -> Series:
    """``key`` over the ``kind`` rows that logged a number for it, ordered by step.

    A step logged twice (rows an older attempt left behind) keeps its last row, as the run's history does.
    """
    by_step: dict[int, float] = {}
    for row in rows:
        value = row.get(key)
        if kind_of(row) == kind and is_number(value):
            by_step[row["step"]] = float(value)
    steps = sorted(by_step)
    return Series(key, kind, steps, [by_step[s] for s in steps])


def final_metrics(rows: Sequence[Mapping[str, Any]], kind: str = "train") -> dict[str, tuple[int, float]]:
    """Each metric's last logged value among the ``kind`` rows, with its step: ``{key: (step, value)}``."""
    out = {}
    for key in metric_keys(rows, kind):
        s = series(rows, key, kind)
        out[key] = (s.steps[-1], s.values[-1])
    return out


def first_metrics(rows: Sequence[Mapping[str, Any]], kind: str = "eval") -> dict[str, tuple[int, float]]:
    """Each metric's first logged value among the ``kind`` rows, with its step."""
    out = {}
    for key in metric_keys(rows, kind):
        s = series(rows, key, kind)
        out[key] = (s.steps[0], s.values[0])
    return out


def read_run_record(run_dir: Path, notes: list[str] | None = None) -> dict[str, Any] | None:
    """``run.json`` (kind, config, versions, started), or None when absent or unreadable (noted)."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        _note(notes, f"{path} cannot be read ({type(exc).__name__}: {exc}); the run's settings are left out")
        return None
    if not isinstance(record, dict):
        _note(notes, f"{path} holds a JSON {type(record).__name__}, not a record; the run's settings are left out")
        return None
    return record


def completion_files(run_dir: Path) -> list[Path]:
    """``completions/step_XXXXX.jsonl`` files, oldest step first."""
    folder = run_dir / COMPLETIONS_DIR
    if not folder.is_dir():
        return []

    def step_of(p: Path) -> int:
        digits = p.stem.rpartition("_")[2]
        return int(digits) if digits.isdigit() else -1

    return sorted((p for p in folder.glob("*.jsonl") if p.is_file()), key=lambda p: (step_of(p), p.name))


def read_completions(path: Path, limit: int, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` rows of a completions file (malformed lines skipped, noted)."""
    rows: list[dict[str, Any]] = []
    skipped = 0
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if len(rows) >= limit:
                    break
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    skipped += 1
                    continue
                if isinstance(row, dict):
                    rows.append(row)
                else:
                    skipped += 1
    except OSError as exc:
        _note(notes, f"{path} cannot be read ({exc}); no completions shown")
        return []
    if skipped:
        _note(notes, f"{path}: {skipped} malformed line(s) skipped")
    return rows


def _note(notes: list[str] | None, text: str) -> None:
    log.warning("%s", text)
    if notes is not None:
        notes.append(text)
