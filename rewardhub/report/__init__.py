"""``rewardhub report RUN_DIR``: plots and one HTML page from any run's directory.

Works from what every run writes: ``metrics.jsonl`` (required), ``run.json`` (the kind and settings, when
present) and ``completions/step_XXXXX.jsonl`` (RL runs). A sub-run with its own ``metrics.jsonl`` (the SFT
warm-up of ``train --sft-warmup-steps``, in ``OUT/sft-warmup``) gets its own section and plots.

Writes into ``--out`` (default ``RUN_DIR/report``): one PNG per topic the run has data for
(:data:`rewardhub.report.plots.TOPICS`; ``reward.png``, ``heldout.png``, ``losses.png``, ...; a sub-run's
prefixed with its name, ``sft-warmup-losses.png``) and ``report.html``, which embeds them and needs nothing
else. Reading the run changes nothing in it, so a run still training can be reported on.

    from rewardhub.report import write_report
    result = write_report("runs/grpo")          # result.html, result.plots
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from rewardhub.errors import ConfigError, DataError
from rewardhub.report.metrics import (
    METRICS_FILE,
    Series,
    completion_files,
    final_metrics,
    first_metrics,
    read_completions,
    read_metrics,
    read_run_record,
    series,
)
from rewardhub.report.page import Completions, Plot, Section, page
from rewardhub.report.plots import TOPICS, plan, render, require_matplotlib

__all__ = ["TOPICS", "Report", "Series", "final_metrics", "first_metrics", "plan", "read_metrics", "series",
           "write_report"]

log = logging.getLogger(__name__)

REPORT_DIR = "report"
HTML_FILE = "report.html"
#: what a sub-run is called in the report
SUB_RUN_TITLES = {"sft-warmup": "SFT warm-up (sft-warmup/), the stage before RL"}


@dataclass
class Report:
    """What :func:`write_report` wrote."""

    html: Path
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)  #: the runs reported on, the run itself first


def write_report(run_dir: str | Path, out: str | Path | None = None, completions: int = 8) -> Report:
    """Plot a run and write its report page.

    Args:
        run_dir: a run's ``--out`` directory.
        out: where the PNGs and ``report.html`` go (created); default ``run_dir/report``.
        completions: how many rows of the newest completions file the page shows (0: none).

    Raises:
        ConfigError: ``run_dir`` does not exist or is not a directory, ``out`` cannot be written, or
            matplotlib is not installed (the message says how to install it).
        DataError: ``run_dir`` has no ``metrics.jsonl``, it holds no rows, or a line before the last is malformed.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ConfigError(f"RUN_DIR {run_dir} does not exist (pass a run's --out directory, e.g. runs/grpo)")
    if not run_dir.is_dir():
        raise ConfigError(f"RUN_DIR {run_dir} is a file; pass the run's directory (the --out it trained into)")
    if completions < 0:
        raise ConfigError(f"--completions must be >= 0, got {completions}")
    if not (run_dir / METRICS_FILE).exists():
        raise DataError(_no_metrics(run_dir))
    notes: list[str] = []
    runs = [(run_dir, "", "Run")] + [(sub, f"{sub.name}-", SUB_RUN_TITLES.get(sub.name, f"Sub-run {sub.name}/"))
                                      for sub in sub_runs(run_dir)]
    rows_of = [read_metrics(d / METRICS_FILE, notes) for d, _, _ in runs]  # every input checked before any output
    require_matplotlib()
    out = Path(out) if out is not None else run_dir / REPORT_DIR
    _make_dir(out)
    sections, written = [], []
    for (directory, prefix, title), rows in zip(runs, rows_of):
        record = read_run_record(directory, notes)
        kind = (record or {}).get("kind", "run")
        section = Section(title if prefix else f"{kind} run", prefix.rstrip("-") or "run", directory, rows, record)
        for figure in plan(rows):
            name = f"{prefix}{figure.topic.name}.png"
            png = render(figure, subtitle=f"{kind}, {directory.resolve().name}")
            written.append(_write(out / name, png))
            section.plots.append(Plot(figure, name, png))
        section.completions = newest_completions(directory, completions, notes)
        sections.append(section)
    text = page(sections, notes, f"rewardhub report: {run_dir.resolve().name}")
    html_path = _write(out / HTML_FILE, text.encode("utf-8"))
    return Report(html_path, written, notes, [s.title for s in sections])


def sub_runs(run_dir: Path) -> list[Path]:
    """The directories right under ``run_dir`` that hold a run of their own (a ``metrics.jsonl``)."""
    subs = [p for p in run_dir.iterdir() if p.is_dir() and p.name != REPORT_DIR and (p / METRICS_FILE).is_file()]
    return sorted(subs, key=lambda p: (p.name != "sft-warmup", p.name))


def newest_completions(run_dir: Path, limit: int, notes: list[str]) -> Completions | None:
    """The first ``limit`` rows of the newest ``completions/step_XXXXX.jsonl`` (None: no such file, or limit 0)."""
    files = completion_files(run_dir)
    if not files or limit == 0:
        return None
    newest = files[-1]
    rows = read_completions(newest, limit, notes)
    try:
        with newest.open("rb") as f:
            total = sum(1 for line in f if line.strip())
    except OSError:
        total = len(rows)
    step = newest.stem.rpartition("_")[2].lstrip("0") or "0"
    return Completions(newest, step, rows, total)


def _no_metrics(run_dir: Path) -> str:
    subs = sub_runs(run_dir)
    if subs:
        names = ", ".join(str(p) for p in subs)
        return (f"{run_dir} has no {METRICS_FILE}; these directories in it do: {names}. Pass one of them, or wait "
                f"until this run logs its first step")
    try:
        held = sorted(p.name for p in run_dir.iterdir())
    except OSError:
        held = []
    what = f"it holds {', '.join(held[:10])}" if held else "it is empty"
    return (f"{run_dir} has no {METRICS_FILE} ({what}): not a run directory, or a run that has not logged its "
            f"first step yet")


def _make_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a directory for the report")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out} cannot be created: {exc}") from exc
    if not os.access(out, os.W_OK):
        raise ConfigError(f"--out {out} is not writable; pass another --out")


def _write(path: Path, data: bytes) -> Path:
    """Write ``data`` under a temporary name, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"{path} cannot be written: {exc}") from exc
    return path
