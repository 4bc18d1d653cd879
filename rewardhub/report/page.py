"""The report as one self-contained HTML page: plots as ``data:`` URIs, inline CSS, no script, no external asset.

Everything that comes from the run (metric names, config values, prompts, completions, reward details) is
untrusted text and goes through :func:`esc` on its way in: no markup from the data reaches the page.
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewardhub.console import number
from rewardhub.report.metrics import final_metrics, first_metrics
from rewardhub.report.plots import PlannedFigure

#: characters of a prompt or completion shown in the table before it is cut
TEXT_LIMIT = 2000

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1180px;
       padding: 0 1em; color: #1f2328; line-height: 1.45; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
.meta { color: #59636e; } .notes { background: #fff8c5; border: 1px solid #d4a72c; padding: .5em 1em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { color: #59636e; font-size: .9em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .88em; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { white-space: pre-wrap; word-break: break-word; font-family: ui-monospace, monospace; max-width: 34em; }
details { margin: .5em 0 1em; } summary { cursor: pointer; }
"""


@dataclass
class Plot:
    figure: PlannedFigure
    file: str  #: the PNG's name in the output directory
    png: bytes


@dataclass
class Completions:
    file: Path
    step: str
    rows: list[dict[str, Any]]
    total: int


@dataclass
class Section:
    """One run of the report (the run itself, or a sub-run such as ``sft-warmup/``)."""

    title: str
    anchor: str
    run_dir: Path
    rows: list[dict[str, Any]]
    record: dict[str, Any] | None
    plots: list[Plot] = field(default_factory=list)
    completions: Completions | None = None


def esc(value: Any) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def page(sections: Sequence[Section], notes: Sequence[str], title: str) -> str:
    """The whole HTML document."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1>",
             f'<p class="meta">written {esc(time.strftime("%Y-%m-%d %H:%M:%S"))} by <code>rewardhub report</code></p>']
    if len(sections) > 1:
        parts.append("<p>" + " · ".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in sections) + "</p>")
    if notes:
        parts.append('<div class="notes"><strong>Notes</strong><ul>'
                     + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul></div>")
    parts.extend(_section(s) for s in sections)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _section(s: Section) -> str:
    record = s.record or {}
    train = [r for r in s.rows if r.get("kind", "train") == "train"]
    evals = [r for r in s.rows if r.get("kind") == "eval"]
    facts = [f"directory <code>{esc(s.run_dir)}</code>", f"kind <strong>{esc(record.get('kind', 'unknown'))}</strong>"]
    if record.get("started"):
        facts.append(f"started {esc(record['started'])}")
    if train:
        facts.append(f"last training step {esc(max(r['step'] for r in train))}")
    facts.append(f"{len(train)} training rows, {len(evals)} held-out evaluations")
    out = [f'<section id="{esc(s.anchor)}"><h2>{esc(s.title)}</h2>', f'<p class="meta">{"; ".join(facts)}</p>']
    out.append("<h3>Plots</h3>")
    if s.plots:
        for plot in s.plots:
            data = base64.b64encode(plot.png).decode("ascii")
            plotted = ", ".join(key if kind == "train" else f"{key} (held-out)" for kind, key in plot.figure.keys)
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(plot.figure.topic.title)}">'
                       f"<figcaption>{esc(plot.file)}: {esc(plotted)}</figcaption></figure>")
    else:
        out.append("<p>No metric of this run has a plot.</p>")
    out.append(_final_tables(s.rows))
    out.append(_completions(s.completions))
    out.append(_settings(s.record))
    out.append("</section>")
    return "\n".join(out)


def _final_tables(rows: Sequence[Mapping[str, Any]]) -> str:
    out = ["<h3>Final metrics</h3>"]
    evals_first, evals_last = first_metrics(rows, "eval"), final_metrics(rows, "eval")
    if evals_last:
        out.append("<p>Held-out evaluation: the first and the last one.</p>")
        out.append(_table(["metric", "first", "at step", "last", "at step"],
                          [(k, _num(evals_first[k][1]), evals_first[k][0], _num(v), step)
                           for k, (step, v) in evals_last.items()], numeric={1, 2, 3, 4}))
    train_last = final_metrics(rows, "train")
    if train_last:
        out.append("<p>Training: each metric's last logged value (the mean over its logging window).</p>")
        out.append(_table(["metric", "value", "at step"], [(k, _num(v), step) for k, (step, v) in train_last.items()],
                          numeric={1, 2}))
    if not evals_last and not train_last:
        out.append("<p>No numeric metrics were logged.</p>")
    return "\n".join(out)


def _completions(c: Completions | None) -> str:
    if c is None:
        return ""
    out = ["<h3>Sampled completions</h3>",
           f"<p>The first {len(c.rows)} of {c.total} rows of <code>{esc(c.file)}</code> (step {esc(c.step)}).</p>"]
    if not c.rows:
        return "\n".join(out)
    preferred = ["prompt", "completion", "reward", "status", "advantage", "eos", "detail", "parts"]
    seen = {k for row in c.rows for k in row}
    columns = [k for k in preferred if k in seen] + sorted(seen - set(preferred))
    body = []
    for i, row in enumerate(c.rows, 1):
        cells = [f'<td class="num">{i}</td>']
        for k in columns:
            v = row.get(k, "")
            if k in ("prompt", "completion") or isinstance(v, str):
                cells.append(f'<td class="text">{esc(_cut(v if isinstance(v, str) else json.dumps(v)))}</td>')
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                cells.append(f'<td class="num">{esc(number(v))}</td>')
            else:
                cells.append(f'<td class="text">{esc(_cut(json.dumps(v, ensure_ascii=False, default=str)))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    head = "<tr><th>#</th>" + "".join(f"<th>{esc(k)}</th>" for k in columns) + "</tr>"
    out.append(f"<table>{head}{''.join(body)}</table>")
    return "\n".join(out)


def _settings(record: Mapping[str, Any] | None) -> str:
    out = ["<h3>Settings</h3>"]
    if record is None:
        out.append("<p>No <code>run.json</code>: this run's settings were not recorded (a run started before "
                   "run.json existed, or one whose record is unreadable).</p>")
        return "\n".join(out)
    facts = [(k, record[k]) for k in ("kind", "started") if k in record]
    versions = record.get("versions")
    if isinstance(versions, Mapping):
        facts.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    if record.get("changes"):
        facts.append(("changes", record["changes"]))
    out.append(_table(["", "value"], [(k, _plain(v)) for k, v in facts]))
    config = record.get("config")
    if isinstance(config, Mapping):
        out.append(f"<details open><summary>config ({len(config)} settings, from run.json)</summary>")
        out.append(_table(["setting", "value"], [(k, _plain(v)) for k, v in config.items()]))
        out.append("</details>")
    return "\n".join(out)


def _table(columns: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[int] = ()) -> str:
    numeric = set(numeric)
    head = "<tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>"
    body = "".join("<tr>" + "".join(f'<td class="num">{esc(v)}</td>' if i in numeric else f"<td>{esc(v)}</td>"
                                    for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _num(v: float) -> str:
    return number(v)


def _plain(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)


def _cut(text: str) -> str:
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + f" … [{len(text) - TEXT_LIMIT} more characters]"
