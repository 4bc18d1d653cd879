"""``rewardhub report RUN_DIR``: plots of a run's metrics and one self-contained HTML page."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "report", help="plot a run's metrics and write an HTML report",
        description="Read a run directory (the --out of sft, train or train-rm: metrics.jsonl, run.json, "
        "completions/) and write one PNG per topic the run logged (reward and its components, held-out "
        "evaluation, losses, KL, reward statuses, completion lengths, throughput, optimisation) and report.html, "
        "a single page that embeds the plots with the final metrics, a sample of the completions and the run's "
        "settings. A sub-run (the SFT warm-up in RUN_DIR/sft-warmup) gets its own section. Needs matplotlib.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run's directory (the --out it trained into)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where the PNGs and report.html go (default: RUN_DIR/report)")
    p.add_argument("--completions", type=int, default=8, metavar="N",
                   help="rows of the newest completions file shown on the page (default: 8; 0: none)")
    return p


def run(args) -> int:
    from rewardhub.console import console
    from rewardhub.report import write_report

    report = write_report(args.run_dir, args.out, args.completions)
    folder = report.html.parent
    names = ", ".join(p.name for p in report.plots) or "none (no metric with a plot)"
    console.print(f"plots ({len(report.plots)}) in {folder}/: {names}", soft_wrap=True, highlight=False, markup=False)
    console.print(f"report: {report.html}", soft_wrap=True, highlight=False, markup=False)
    if len(report.sections) > 1:
        console.print(f"sections: {'; '.join(report.sections)}", soft_wrap=True, highlight=False, markup=False)
    return 0
