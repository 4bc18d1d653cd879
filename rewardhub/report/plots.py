"""The report's figures: one per topic (reward, held-out evaluation, losses, KL, statuses, lengths, speed,
optimisation), each drawn only when the run logged something for it.

A topic is data, not code: :data:`TOPICS` lists its panels and, for each panel, the metric names (regular
expressions, matched against the whole name) that it plots. Every recipe's metric names are covered (SFT's
``loss``; RL's ``reward/*``, ``kl/*``, ``policy/*``, ``completions/*``, ``time/*``; DPO's ``rewards/*`` and
``online/*``; the reward model's ``accuracy`` and ``margin``); a name no panel claims is still in the final
metrics table. Figures are drawn on matplotlib's Agg canvas (:class:`matplotlib.figure.Figure`, no pyplot):
nothing opens a window and nothing global is changed.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rewardhub.errors import ConfigError
from rewardhub.report.metrics import Series, metric_keys, series

#: a reward status's colour in the stacked shares (the same in every report)
STATUS_COLOURS = {"ok": "#2da44e", "wrong": "#cf222e", "no_answer": "#8c959f", "timeout": "#8250df",
                  "error": "#24292f", "pending": "#0969da"}
#: how a missing matplotlib is reported
INSTALL_HINT = "pip install matplotlib  (or: pip install 'rewardhub[report]')"


@dataclass(frozen=True)
class Line:
    """The metrics one pattern plots in a panel.

    Args:
        pattern: a regular expression a metric name must match in full; its groups fill ``label``.
        kind: ``train`` or ``eval`` rows.
        label: the legend entry, ``str.format``-ed with the pattern's groups and ``key``.
        band: a metric of the same kind drawn as ``value ± band`` (a standard deviation).
        when: ``any`` (drawn whenever logged), ``nonzero`` (only if some value is not 0), ``varies`` (only if
            not constant).
        unless_same_as: not drawn when it equals this metric at every step (a duplicate line).
    """

    pattern: str
    kind: str = "train"
    label: str = "{key}"
    band: str | None = None
    when: str = "any"
    unless_same_as: str | None = None


@dataclass(frozen=True)
class Panel:
    title: str
    ylabel: str
    lines: tuple[Line, ...]
    stacked: bool = False  #: shares that add up to 1, drawn as a stacked area


@dataclass(frozen=True)
class Topic:
    name: str  #: the PNG's file name, without ``.png``
    title: str
    panels: tuple[Panel, ...]


TOPICS: tuple[Topic, ...] = (
    Topic("reward", "Reward", (
        Panel("Reward of the sampled completions", "reward", (
            Line("reward/mean", label="mean reward", band="reward/std"),
            Line("reward/score_mean", label="score after the missing-EOS penalty", unless_same_as="reward/mean"),
            Line(r"reward/(.+)/mean", label="component: {0}"),
        )),
        Panel("DPO implicit rewards (training pairs)", "implicit reward", (
            Line("rewards/chosen", label="chosen"), Line("rewards/rejected", label="rejected"),
            Line("rewards/margins", label="margin"),
        )),
        Panel("Reward-model scores (training pairs)", "score", (
            Line("reward_chosen", label="chosen"), Line("reward_rejected", label="rejected"),
            Line("margin", label="margin"),
        )),
        Panel("Provider scores of online DPO samples", "score", (
            Line("online/score_mean", label="mean score", band="online/score_std"),
        )),
    )),
    Topic("heldout", "Held-out evaluation", (
        Panel("Accuracy", "accuracy", (
            Line("accuracy", kind="eval", label="held-out"),
            Line("rewards/accuracies", kind="eval", label="held-out: chosen has the higher implicit reward"),
            Line("logps/accuracy", kind="eval", label="held-out: chosen is the more likely reply"),
            Line("accuracy", label="training batches"),
            Line("rewards/accuracies", label="training batches: chosen has the higher implicit reward"),
        )),
        Panel("Held-out reward", "reward", (
            Line("reward_mean", kind="eval", label="mean reward of greedy completions"),
            Line("mean_reward", kind="eval", label="mean reward-model score"),
            Line("margin", kind="eval", label="margin, chosen - rejected"),
            Line("rewards/margins", kind="eval", label="implicit reward margin"),
        )),
    )),
    Topic("losses", "Losses", (
        Panel("Loss", "loss", (Line("loss", label="training"), Line("loss", kind="eval", label="held-out"))),
        Panel("Policy loss", "loss", (Line("policy/loss", label="clipped policy loss"),)),
        Panel("Value loss", "loss", (Line("value/loss", label="clipped value loss"),)),
    )),
    Topic("kl", "KL divergence", (
        Panel("KL to the reference model", "KL (nats)", (
            Line("kl/mean_per_seq", label="per sequence, sampled completions"),
            Line("kl/loss_term", label="KL loss term (k3, per token)"),
        )),
        Panel("Policy change within a step", "approx. KL (nats)", (
            Line("policy/approx_kl", label="to the sampling policy"),
        )),
        Panel("KL coefficient", "beta", (Line("kl/coef", label="adaptive KL coefficient", when="varies"),)),
    )),
    Topic("statuses", "Reward statuses and failures", (
        Panel("Status of each sampled completion's reward", "share of samples", (
            Line(r"reward/frac_(.+)", label="{0}", when="nonzero"),
        ), stacked=True),
        Panel("Held-out rows whose scoring failed", "share of rows", (
            Line("frac_failed", kind="eval", label="timeout / error / pending", when="nonzero"),
        )),
        Panel("Online DPO prompts that formed no pair", "count", (
            Line("online/skipped", label="prompts with all samples tied", when="nonzero"),
            Line("online/failed", label="comparisons that failed", when="nonzero"),
        )),
    )),
    Topic("lengths", "Completion lengths", (
        Panel("Completion length", "tokens", (Line("completions/mean_length", label="mean"),)),
        Panel("Completions that ended", "share", (Line("completions/eos_rate", label="ended with EOS"),)),
    )),
    Topic("throughput", "Throughput", (
        Panel("Tokens per second", "tokens/s", (
            Line("tokens_per_s", label="training tokens/s (logging window)"),
            Line("time/tokens_per_s", label="sampled tokens/s (generation)"),
        )),
        Panel("Time per step", "seconds", (
            Line("time/step", label="whole step"),
            Line(r"time/(generation|scoring|forward|update)", label="{0}"),
        )),
    )),
    Topic("optimization", "Optimisation", (
        Panel("Learning rate", "learning rate", (Line("lr", label="learning rate"),)),
        Panel("Gradient norm (before clipping)", "norm", (
            Line("grad_norm", label="gradient norm", when="nonzero"),
            Line("update/grad_norm", label="gradient norm", when="nonzero"),
        )),
        Panel("Policy entropy", "nats per token", (Line("policy/entropy", label="entropy"),)),
        Panel("Clipped share", "share of tokens", (
            Line("policy/clipfrac", label="policy ratio clipped"), Line("value/clipfrac", label="value clipped"),
        )),
        Panel("Value head", "explained variance", (Line("value/explained_variance", label="explained variance"),)),
    )),
)


@dataclass
class Drawn:
    """One line of a planned panel: its series, legend label and optional ± band."""

    series: Series
    label: str
    band: Series | None = None


@dataclass
class PlannedPanel:
    panel: Panel
    lines: list[Drawn]


@dataclass
class PlannedFigure:
    topic: Topic
    panels: list[PlannedPanel]

    @property
    def keys(self) -> list[tuple[str, str]]:
        """``(kind, key)`` of every plotted series."""
        return [(d.series.kind, d.series.key) for p in self.panels for d in p.lines]


def plan(rows: Sequence[Mapping[str, Any]], topics: Sequence[Topic] = TOPICS) -> list[PlannedFigure]:
    """The figures this run has data for: each topic with the panels (and lines) that have something to draw."""
    keys = {kind: metric_keys(rows, kind) for kind in ("train", "eval")}
    figures = []
    for topic in topics:
        panels = []
        for panel in topic.panels:
            lines: list[Drawn] = []
            taken: set[tuple[str, str]] = set()
            for line in panel.lines:
                for key in keys.get(line.kind, []):
                    match = re.fullmatch(line.pattern, key)
                    if match is None or (line.kind, key) in taken:
                        continue
                    s = series(rows, key, line.kind)
                    if not s or not _wanted(s, line, rows):
                        continue
                    taken.add((line.kind, key))
                    band = series(rows, line.band, line.kind) if line.band else None
                    lines.append(Drawn(s, line.label.format(*match.groups(), key=key), band or None))
            if lines:
                panels.append(PlannedPanel(panel, lines))
        if panels:
            figures.append(PlannedFigure(topic, panels))
    return figures


def _wanted(s: Series, line: Line, rows: Sequence[Mapping[str, Any]]) -> bool:
    if line.when == "nonzero" and not any(v != 0 for v in s.values):
        return False
    if line.when == "varies" and max(s.values) - min(s.values) <= 1e-12 * max(1.0, abs(max(s.values))):
        return False
    if line.unless_same_as:
        other = series(rows, line.unless_same_as, line.kind)
        if other.steps == s.steps and all(math.isclose(a, b, abs_tol=1e-12) for a, b in zip(other.values, s.values)):
            return False
    return True


def require_matplotlib() -> None:
    """Raise a :class:`~rewardhub.errors.ConfigError` that says how to install matplotlib when it is missing."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError(f"rewardhub report draws its plots with matplotlib, which is not installed: {INSTALL_HINT}")


def render(figure: PlannedFigure, subtitle: str = "", dpi: int = 100) -> bytes:
    """The figure as PNG bytes: its panels in a grid of up to two columns, each titled, with ``step`` on x."""
    require_matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    n = len(figure.panels)
    cols = 1 if n == 1 else 2
    nrows = math.ceil(n / cols)
    fig = Figure(figsize=(7.0 if cols == 1 else 11.0, 3.4 * nrows + 0.6), dpi=dpi, layout="constrained")
    title = figure.topic.title + (f"  ({subtitle})" if subtitle else "")
    fig.suptitle(title, fontsize=12, fontweight="bold")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, planned in zip(axes, figure.panels):
        _draw_panel(ax, planned)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[n:]:
        ax.set_visible(False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _draw_panel(ax, planned: PlannedPanel) -> None:
    panel = planned.panel
    ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(panel.ylabel)
    ax.grid(True, alpha=0.3)
    if panel.stacked:
        _draw_stacked(ax, planned.lines)
    else:
        for drawn in planned.lines:
            s = drawn.series
            few = len(s) <= 40 or s.kind == "eval"
            style = "--" if s.kind == "train" and any(d.series.kind == "eval" for d in planned.lines) else "-"
            (handle,) = ax.plot(s.steps, s.values, style, marker="o" if few else None, markersize=3.5,
                                linewidth=1.6, label=drawn.label)
            if drawn.band is not None:
                std = dict(zip(drawn.band.steps, drawn.band.values))
                steps = [t for t in s.steps if t in std]
                mean = dict(zip(s.steps, s.values))
                ax.fill_between(steps, [mean[t] - std[t] for t in steps], [mean[t] + std[t] for t in steps],
                                color=handle.get_color(), alpha=0.18, linewidth=0, label=f"{drawn.label} ± std")
    ax.legend(fontsize=8, loc="best", framealpha=0.8)


def _draw_stacked(ax, lines: list[Drawn]) -> None:
    steps = sorted({t for d in lines for t in d.series.steps})
    stacks = [[dict(zip(d.series.steps, d.series.values)).get(t, 0.0) for t in steps] for d in lines]
    labels = [d.label for d in lines]
    cycle = [f"C{i}" for i in range(10)]
    colours = [STATUS_COLOURS.get(label, cycle[i % 10]) for i, label in enumerate(labels)]
    if len(steps) == 1:  # one logged step: an area needs two
        bottom = 0.0
        for values, label, colour in zip(stacks, labels, colours):
            ax.bar(steps, values, bottom=bottom, width=0.6, label=label, color=colour)
            bottom += values[0]
    else:
        ax.stackplot(steps, stacks, labels=labels, alpha=0.85, colors=colours)
        ax.set_xlim(steps[0], steps[-1])
    ax.set_ylim(0, max(1.0, max(sum(col) for col in zip(*stacks))))
