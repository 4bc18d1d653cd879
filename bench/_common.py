"""Pieces the rewardhub-vs-TRL benchmarks share: per-process peak RSS, the step clock, interleaved runs, pooling.

Each benchmark runs every framework in a subprocess of its own (so peak RSS is per framework) and times the
steps from inside it; what is the same in all of them lives here, so a fix to the measurement reaches every
benchmark at once. A benchmark script imports it as ``_common`` (``python bench/NAME.py`` puts ``bench/`` first
on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

#: The model sizes of the benchmarks: random-init Llamas (MHA) built by ``rewardhub.tiny_model.build_tiny_model``;
#: ``tiny`` only checks that a script runs.
VARIANTS = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                 intermediate_size=128),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                  intermediate_size=1024),
    "large": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                  intermediate_size=2048),
}
WORDS = ("the", "a", "model", "learns", "to", "answer", "question", "step", "by", "reason", "data", "value",
         "sum", "of", "two", "numbers", "is", "then", "we", "check", "result", "and", "write", "it", "down")


def peak_rss_mib() -> float:
    """High-water RSS of this process (``VmHWM``; reset at exec, unlike ``ru_maxrss``), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepClock:
    """Timestamps of step ends (and the setup end), tokens per step, peak RSS after the last step.

    A step's time runs from the end of the previous step (or from :meth:`mark_ready`, the end of setup) to the
    end of this one, so it covers everything the loop does per step. ``cpu`` is the process's CPU time over
    the same span: with one torch thread on a loaded machine it leaves out the time the process waited for a
    core, so it moves less with load than the wall time (with more threads it also counts their spinning).
    Token counts seen during a step (``add``) are summed into that step by :meth:`step_end`, so both
    frameworks' tokens are counted by the same code.
    """

    def __init__(self, total_steps: int, warmup: int = 0, profiler: Any = None) -> None:
        self.total, self.warmup, self.profiler = total_steps, warmup, profiler
        self.t_start, self.c_start = time.perf_counter(), time.process_time()
        self.t_prev: float | None = None
        self.c_prev = self.c_start
        self.setup_s = float("nan")
        self.steps: list[dict[str, float]] = []
        self.pending: dict[str, float] = {}
        self.peak_rss_last_step = 0.0

    def mark_ready(self) -> None:
        """Setup is over: the next step's time counts from here."""
        self.t_prev, self.c_prev = time.perf_counter(), time.process_time()
        self.setup_s = self.t_prev - self.t_start

    def add(self, **counts: float) -> None:
        """Counts (tokens, padded slots, ...) of work done in the current step; summed per step."""
        if len(self.steps) < self.total:  # work after the last step (a final calibration, ...) is not a step's
            for key, value in counts.items():
                self.pending[key] = self.pending.get(key, 0.0) + float(value)

    def step_end(self, tokens: float | None = None, **extra: float) -> None:
        """One optimizer step ended: its time, ``tokens`` (default: the ``tokens`` added since the last step)."""
        now, cpu = time.perf_counter(), time.process_time()
        counts, self.pending = self.pending, {}
        if tokens is not None:
            counts["tokens"] = float(tokens)
        self.steps.append({"time": now - (self.t_prev if self.t_prev is not None else self.t_start),
                           "tokens": counts.pop("tokens", float("nan")), "cpu": cpu - self.c_prev, **counts, **extra})
        self.t_prev, self.c_prev = now, cpu
        if len(self.steps) == self.total:
            self.peak_rss_last_step = peak_rss_mib()
        if self.profiler is not None:  # profile the measured steps only
            if len(self.steps) == self.warmup:
                self.profiler.enable()
            elif len(self.steps) == self.total:
                self.profiler.disable()


def train_trl(trainer_cls: Any, clock: StepClock, count: Any, checks: dict[str, Any], **trainer_kwargs: Any
              ) -> dict[str, Any]:
    """Build a TRL trainer with the step clock as a callback, count each training forward's batch, train.

    ``count(clock, inputs)`` adds the batch's tokens to the clock (the same counts the rewardhub side adds from
    its own batches); each step's loss is recorded beside its time. Returns the worker's result.
    """
    import torch
    import trl
    from transformers import TrainerCallback

    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.mark_ready()

        def on_step_end(self, args, state, control, **kwargs):
            clock.step_end(loss=losses[-1] if losses else float("nan"))

    trainer = trainer_cls(callbacks=[Clock()], **trainer_kwargs)
    compute_loss = trainer.compute_loss

    def counted_loss(model, inputs, *a, **kw):
        value = compute_loss(model, inputs, *a, **kw)
        if model.training:
            count(clock, inputs)
            losses.append(float((value[0] if isinstance(value, tuple) else value).detach()))
        return value

    trainer.compute_loss = counted_loss
    args = trainer.args
    checks.update(gradient_checkpointing=bool(args.gradient_checkpointing), dtype=str(trainer.model.dtype),
                  bf16_autocast=bool(args.bf16), threads=torch.get_num_threads(), optim=str(args.optim),
                  rows=len(trainer.train_dataset))
    trainer.train()
    checks["checkpointing_in_train"] = bool(trainer.model.is_gradient_checkpointing)  # Trainer turns it on in train()
    return {"steps": clock.steps, "peak_rss_mib": clock.peak_rss_last_step, "peak_rss_end_mib": peak_rss_mib(),
            "setup_s": clock.setup_s, "trl_version": trl.__version__, "checks": checks}


def worker_env(threads: int) -> dict[str, str]:
    """The environment of a worker: ``threads`` BLAS/OpenMP threads, offline, quiet, CPU only."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
            "CUDA_VISIBLE_DEVICES": "", "TRL_EXPERIMENTAL_SILENCE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


def run_worker_process(script: str | Path, args: Sequence[str], result: Path, threads: int, label: str
                       ) -> dict[str, Any]:
    """Run ``script --worker ...`` (one framework) in a fresh process; its JSON result, or exit with its log."""
    proc = subprocess.run([sys.executable, str(Path(script).resolve()), *args, "--result", str(result)],
                          env=worker_env(threads), capture_output=True, text=True)
    if proc.returncode != 0 or not result.exists():
        sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-10000:])
        raise SystemExit(f"{label} worker failed (exit {proc.returncode})")
    return json.loads(result.read_text())


def interleaved(frameworks: Sequence[str], repeats: int) -> Iterator[tuple[int, str]]:
    """(repeat, framework) in the order A B, B A, A B, ...: load drift on a shared machine hits both alike."""
    for rep in range(repeats):
        for name in frameworks if rep % 2 == 0 else list(frameworks)[::-1]:
            yield rep, name


def run_interleaved(script: str | Path, frameworks: Sequence[str], args: Any, worker_args: Sequence[str],
                    tmp: Path, label: str) -> tuple[dict[str, list[dict[str, Any]]], list[float]]:
    """``args.repeats`` interleaved worker runs of every framework: their raw results, and the load after each.

    ``worker_args`` is passed to every worker; ``--profile`` is added for the first run of each framework when
    ``args.profile`` (a directory) is set, as ``DIR/<label>_<framework>.prof``.
    """
    runs: dict[str, list[dict[str, Any]]] = {f: [] for f in frameworks}
    loads = []
    for rep, framework in interleaved(frameworks, args.repeats):
        cmd = ["--worker", framework, *worker_args, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--threads", str(args.threads)]
        if args.profile and rep == 0:
            cmd += ["--profile", str(args.profile / f"{label}_{framework}.prof")]
        raw = run_worker_process(script, cmd, tmp / f"{framework}.json", args.threads, framework)
        runs[framework].append(raw)
        loads.append(os.getloadavg()[0])
        print(f"  {label} {framework} run {rep + 1}: {raw['wall_s']:.1f}s, load {loads[-1]:.2f}", flush=True)
    for f in frameworks:
        print(f"  {f} as run: {runs[f][0].get('checks', {})}")
    return runs, loads


def worker_main(args: Any, run: Any, prefix: str) -> None:
    """Inside a worker process: run one framework (``run(model_dir, data_file, out, steps, threads, clock)``),
    profiling its measured steps when asked, and write its result JSON."""
    import tempfile

    t0 = time.perf_counter()
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    clock = StepClock(args.steps, args.warmup, profiler)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}_{args.worker}_") as out:
        result = run(args.model_dir, args.data_file, out, args.steps, args.threads, clock)
    result["wall_s"] = time.perf_counter() - t0
    if profiler is not None:
        profiler.dump_stats(args.profile)
    Path(args.result).write_text(json.dumps(result))


def pooled(runs: Sequence[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Pool the measured steps (after ``warmup``) of every run: median step time and its spread, tokens/s.

    tokens/s is the measured steps' tokens over their total time (pooled over runs); ``tokens_per_s_runs`` is
    the same per run, so the spread between runs is visible next to the pooled figure.
    """
    steps = [s for res in runs for s in res["steps"][warmup:]]
    if not steps:
        raise SystemExit(f"no measured steps: --steps must exceed --warmup ({warmup})")
    times = sorted(s["time"] for s in steps)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    per_run = []
    for res in runs:
        mine = res["steps"][warmup:]
        per_run.append(sum(s["tokens"] for s in mine) / sum(s["time"] for s in mine))
    total_t, total_tok = sum(times), sum(s["tokens"] for s in steps)
    out = {"median_step_s": statistics.median(times), "step_s_q1": q[0], "step_s_q3": q[2],
           "measured_steps": len(steps), "repeats": len(runs), "measured_total_s": total_t,
           "tokens_per_step": total_tok / len(steps), "tokens_per_s": total_tok / total_t,
           "tokens_per_s_runs": per_run, "peak_rss_mib": max(res["peak_rss_mib"] for res in runs),
           "peak_rss_end_mib": max(res["peak_rss_end_mib"] for res in runs),
           "setup_s": [res.get("setup_s", float("nan")) for res in runs], "wall_s": [res["wall_s"] for res in runs]}
    for key in steps[0]:
        if key not in ("time", "tokens") and all(key in s for s in steps):
            out[f"{key}_per_step"] = statistics.fmean(s[key] for s in steps)
    return out


def paired_ratios(ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]], warmup: int) -> list[float]:
    """tokens/s ratio of run i of ``ours`` over run i of ``theirs`` (run back to back): its spread shows the noise."""
    return [pooled([a], warmup)["tokens_per_s"] / pooled([b], warmup)["tokens_per_s"] for a, b in zip(ours, theirs)]


def build_model(path: Path, variant: str, positions: int | None = None, seed: int = 0) -> int:
    """Write the ``variant`` Llama (and the char tokenizer) to ``path``; returns its parameter count."""
    from transformers.utils import logging as hf_logging

    from rewardhub.tiny_model import build_tiny_model

    hf_logging.disable_progress_bar()
    extra = {"max_position_embeddings": positions} if positions else {}
    build_tiny_model(path, seed=seed, **extra, **VARIANTS[variant])
    return llama_params(path)


def random_text(rng: random.Random, n_chars: int) -> str:
    """Random words cut to exactly ``n_chars`` characters (with the char tokenizer: ``n_chars`` tokens)."""
    out = ""
    while len(out) < n_chars:
        out += rng.choice(WORDS) + " "
    return out[:n_chars]


def llama_params(model_dir: Path) -> int:
    """Parameter count of a ``build_tiny_model`` Llama (MHA, no biases) from its ``config.json``."""
    cfg = json.loads((model_dir / "config.json").read_text())
    h, n_layers, inter, vocab = (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"],
                                 cfg["vocab_size"])
    per_layer = 4 * h * h + 3 * h * inter + 2 * h  # q, k, v, o + gate/up/down + two norms
    embeddings = vocab * h * (1 if cfg.get("tie_word_embeddings") else 2)
    return n_layers * per_layer + embeddings + h


def print_profile(path: Path, top: int) -> None:
    """The ``top`` functions of a cProfile dump, by cumulative and by own time."""
    import pstats

    for key in ("cumulative", "tottime"):
        print(f"\n--- {path.name}: top {top} by {key} (measured steps only) ---")
        pstats.Stats(str(path)).strip_dirs().sort_stats(key).print_stats(top)


def versions_line(title: str, threads: int) -> str:
    """One line naming the versions and the machine the figures come from."""
    from importlib.metadata import version

    import torch

    return (f"{title} | trl {version('trl')}, transformers {version('transformers')}, torch {torch.__version__}, "
            f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {threads} torch thread(s)")


def bench_parser(doc: str, frameworks: Sequence[str], steps: int, repeats: int) -> Any:
    """The flags every rewardhub-vs-TRL benchmark has (``--steps``, ``--repeats``, ``--profile``, the worker's)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=steps, help=f"optimizer steps per framework run (default {steps})")
    ap.add_argument("--warmup", type=int, default=3, help="leading steps of each run dropped from the statistics")
    ap.add_argument("--repeats", type=int, default=repeats,
                    help="runs per framework, interleaved (TRL, rewardhub, rewardhub, TRL, ...) so load drift on a "
                         f"shared machine hits both alike; measured steps are pooled (default {repeats})")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in each framework (default 2)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="cProfile the measured steps of each framework's first run into DIR and print the top "
                         "functions (timings are then inflated by the profiler)")
    ap.add_argument("--profile-top", type=int, default=30, help="functions printed per profile listing")
    ap.add_argument("--worker", choices=frameworks, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--data-file", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    return ap


def driver_ready(ap: Any, args: Any, trainer: str) -> bool:
    """Check the driver's flags; False (with how to install it) when TRL is missing."""
    import importlib.util

    if args.steps <= args.warmup:
        ap.error(f"--steps ({args.steps}) must be larger than --warmup ({args.warmup})")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if importlib.util.find_spec("trl") is None:
        print(f"TRL is not installed; this benchmark compares against trl.{trainer}. Install it with\n"
              "    pip install --no-deps trl  (plus its small missing dependencies, so pip does not replace "
              "torch/transformers), then run this script again.")
        return False
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    return True


def summarize_runs(runs: dict[str, list[dict[str, Any]]], warmup: int) -> dict[str, dict[str, Any]]:
    """Each framework's pooled summary (:func:`pooled`), with its raw steps and what its first run checked."""
    return {f: {**pooled(r, warmup), "raw_steps": [x["steps"] for x in r], "checks": r[0].get("checks", {})}
            for f, r in runs.items()}


def matched_step_ratios(ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]], warmup: int,
                        clock: str = "time") -> list[float]:
    """tokens/s of ``ours`` over ``theirs`` at each measured step, step s of run i against step s of run i.

    Both frameworks draw the same batches (same rows, same seed), so matched steps do the same work; the median
    of these ratios is the figure least moved by a burst of load on a shared machine. ``clock``: ``time``
    (wall) or ``cpu`` (the process's CPU time).
    """
    return [(sa["tokens"] / sa[clock]) / (sb["tokens"] / sb[clock])
            for ra, rb in zip(ours, theirs) for sa, sb in zip(ra["steps"][warmup:], rb["steps"][warmup:])]


def ratio_line(rows: dict[str, Any], runs: dict[str, list[dict[str, Any]]], ours: str, theirs: str, warmup: int,
               target: float | None = None) -> tuple[str, dict[str, Any]]:
    """``ours``/``theirs``: the tokens/s ratio of matched steps (median, quartiles), pooled and per run pair;
    step time and peak RSS ratios (a line for the table and the same as a dict for ``--json``)."""
    a, b = rows[ours], rows[theirs]
    steps = sorted(matched_step_ratios(runs[ours], runs[theirs], warmup))
    q = statistics.quantiles(steps, n=4) if len(steps) > 1 else [steps[0]] * 3
    ratio = {"tokens_per_s_matched_steps_median": q[1], "tokens_per_s_matched_steps_q1": q[0],
             "tokens_per_s_matched_steps_q3": q[2], "tokens_per_s_pooled": a["tokens_per_s"] / b["tokens_per_s"],
             "tokens_per_s_run_pairs": paired_ratios(runs[ours], runs[theirs], warmup),
             "step_time": a["median_step_s"] / b["median_step_s"], "peak_rss": a["peak_rss_mib"] / b["peak_rss_mib"]}
    pairs = ratio["tokens_per_s_run_pairs"]
    line = (f"{ours}/{theirs}: tokens/s {q[1]:.2f}x (median of {len(steps)} matched steps, quartiles {q[0]:.2f}-"
            f"{q[2]:.2f}; pooled {ratio['tokens_per_s_pooled']:.2f}x; run pairs "
            f"{', '.join(f'{x:.2f}' for x in pairs)}), median step time {ratio['step_time']:.2f}x, "
            f"peak RSS {ratio['peak_rss']:.2f}x")
    if all("cpu" in s for r in (*runs[ours], *runs[theirs]) for s in r["steps"]):
        cpu = statistics.median(matched_step_ratios(runs[ours], runs[theirs], warmup, "cpu"))
        ratio["tokens_per_cpu_s_matched_steps_median"] = cpu
        line += f"; per CPU second {cpu:.2f}x"
    if target is not None:
        line += f"; target (>= {target}x tokens/s): {'MET' if q[1] >= target else 'NOT MET'}"
    return line, ratio


def run_benchmark(script: str | Path, args: Any, title: str, frameworks: Sequence[str], write_data: Any,
                  comparisons: Sequence[tuple[str, str, float | None, str]], print_table: Any, positions: int,
                  batch: int) -> None:
    """The driver of a rewardhub-vs-TRL benchmark: data, one model per ``args.variant``, interleaved runs, tables.

    ``write_data(path)`` writes the rows and returns the sequence lengths; ``comparisons`` lists ``(ours,
    theirs, target, note)`` ratios to print (those whose frameworks ran); ``print_table(variant, n_params,
    frameworks, rows, lines, mean_length)`` prints one variant's table with those ratio lines.
    """
    import tempfile

    print(versions_line(f"rewardhub vs TRL {title}", args.threads))
    load_start = os.getloadavg()
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}", flush=True)
    variants = ["small", "large"] if args.variant == "both" else [args.variant]
    report: dict[str, Any] = {"batch_size": batch, "steps": args.steps, "warmup": args.warmup,
                              "repeats": args.repeats, "threads": args.threads, "profiled": args.profile is not None,
                              "loadavg_start": load_start, "variants": {}}
    label = title.replace(" ", "_")
    with tempfile.TemporaryDirectory(prefix=f"bench_{label}_vs_trl_") as tmp_name:
        tmp = Path(tmp_name)
        data_file = tmp / "data.jsonl"
        lengths = write_data(data_file)
        for variant in variants:
            model_dir = tmp / f"model-{variant}"
            n_params = build_model(model_dir, variant, positions)
            worker_args = ["--model-dir", str(model_dir), "--data-file", str(data_file), "--batch-size", str(batch)]
            runs, loads = run_interleaved(script, frameworks, args, worker_args, tmp, f"{label}_{variant}")
            rows = summarize_runs(runs, args.warmup)
            lines, ratios = [], {}
            for ours, theirs, target, note in comparisons:
                if ours in rows and theirs in rows:
                    line, ratios[f"{ours}/{theirs}"] = ratio_line(rows, runs, ours, theirs, args.warmup, target)
                    lines.append(line + note)
            print_table(variant, n_params, frameworks, rows, lines, statistics.fmean(lengths))
            if args.profile:
                for f in frameworks:
                    print_profile(args.profile / f"{label}_{variant}_{f}.prof", args.profile_top)
            report["variants"][variant] = {"n_params": n_params, "config": VARIANTS[variant], **rows,
                                           "ratios": ratios, "loadavg_1min_after_runs": loads}
    load_end = os.getloadavg()
    report["loadavg_end"] = load_end
    print(f"\nload average at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} "
          f"(the machine has {os.cpu_count()} CPUs; each worker uses {args.threads} thread(s))")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


def print_step_table(title: str, frameworks: Sequence[str], rows: dict[str, Any], lines: Sequence[str],
                     legend: str, loss_tokens: bool = False) -> None:
    """The per-framework table of a training benchmark (step time and quartiles, tokens per step, padding,
    tokens/s overall and per run, peak RSS, setup time), then ``lines`` (the ratios) and ``legend``.
    ``loss_tokens`` adds the tokens that carry a loss (SFT's completion tokens)."""
    width = max(len("framework"), *(len(n) for n in frameworks))
    r0 = rows[frameworks[0]]
    print(f"\n== {title}, {r0['measured_steps']} measured steps ({r0['repeats']} run(s) each) ==")
    head = (f"{'framework':{width}s} {'step ms':>8s} {'IQR ms':>15s} {'tok/step':>8s} {'pad share':>9s} "
            + (f"{'loss tok':>8s} " if loss_tokens else "")
            + f"{'tokens/s':>9s} {'per run':>22s} {'peak RSS MiB':>12s} {'setup s':>8s}")
    print(head)
    print("-" * len(head))
    for name in frameworks:
        r = rows[name]
        pad_share = 1 - r["tokens_per_step"] / r["padded_per_step"]
        per_run = ", ".join(f"{v:.0f}" for v in r["tokens_per_s_runs"])
        iqr = f"{r['step_s_q1'] * 1e3:7.1f}-{r['step_s_q3'] * 1e3:<7.1f}"
        print(f"{name:{width}s} {r['median_step_s'] * 1e3:8.1f} {iqr} {r['tokens_per_step']:8.0f} {pad_share:9.1%} "
              + (f"{r['loss_tokens_per_step']:8.0f} " if loss_tokens else "")
              + f"{r['tokens_per_s']:9.0f} {per_run:>22s} {r['peak_rss_mib']:12.1f} "
              f"{statistics.median(r['setup_s']):8.2f}")
    for line in lines:
        print(line)
    print(legend)
