"""ReFT vs SFT at equal wall clock on the built-in chain-of-thought task: 3 seeds, imperfect and clean teachers.

For each setting (``imperfect``: the teacher drops the carry in 60% of the steps that have one, so about half
its demonstrations end wrong; ``clean``: every demonstration is right) and each seed, two arms train the
built-in tiny model on the same 2,000 questions:

* **ReFT**: the default job (``rewardhub train --reward=verifier``): an SFT warm-up, then GRPO against the
  verifier (1 for the right final answer, 0.1 for a wrong one) on the same questions;
* **SFT only**: SFT from scratch for the same training time the ReFT arm took (``max_time``), its step count
  sized from the warm-up's measured speed so its learning-rate schedule ends at about that time.

Both are scored the same way: the verifier on greedy completions of the 500 held-out test problems (always
correct, never trained on). Time is *training* time: each run's clock leaves out its own held-out
evaluations, so evaluating often costs an arm no steps. Every run uses 1 CPU thread; ``--jobs 2`` runs two
(setting, seed) pairs at once on 2 cores.

Writes ``OUT/result.json`` (every run), a table on stdout and ``OUT/reft_vs_sft.png``: held-out accuracy against
training seconds, both arms, every seed.

Run: python examples/reft_vs_sft.py [--jobs 2] [--seeds 0 1 2] [--settings imperfect clean] [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SETTINGS = {"imperfect": 0.6, "clean": 0.0}  # teacher_error


def reft_recipe(args, setting: str, seed: int, out: Path):
    """The default job's configuration (its preset), for one setting and seed."""
    from rewardhub.config import RL_PRESETS, RLConfig
    from rewardhub.tiny_model import BUILTIN_TINY

    preset = {**RL_PRESETS[BUILTIN_TINY], "data_args": {"teacher_error": SETTINGS[setting]}}
    if args.quick:
        preset.update(sft_warmup_steps=20, max_steps=3, batch_size=4, eval_size=args.eval_size)
    return RLConfig(model=BUILTIN_TINY, reward="verifier", out=str(out), seed=seed, threads=1,
                    eval_every=max(preset["max_steps"] // 8, 1), completions_every=0, resume=False,
                    **{**preset, "eval_size": args.eval_size})


def sft_run(rl_cfg, out: Path, steps: int, max_time: float | None, provider) -> list[dict]:
    """SFT as the warm-up runs it (SFTConfig's defaults), evaluated every ~1/10 of the run; its eval rows."""
    from rewardhub.config import SFTConfig
    from rewardhub.recipes.sft import train_sft

    cfg = SFTConfig(model=rl_cfg.model, data=rl_cfg.data, data_args=dict(rl_cfg.data_args), out=str(out),
                    seed=rl_cfg.seed, max_steps=steps, max_time=None if max_time is None else str(max_time),
                    eval_every=max(steps // 10, 1), eval_size=rl_cfg.eval_size, save_every=0,
                    log_every=max(steps // 10, 1), resume=False, threads=1, reward="verifier",
                    eval_max_new_tokens=rl_cfg.max_new_tokens)
    train_sft(cfg, provider=provider)
    return eval_rows(out)


def eval_rows(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{"step": r["step"], "train_s": r["train_time_s"], "accuracy": r["accuracy"]}
            for r in rows if r["kind"] == "eval"]


def run_pair(args, setting: str, seed: int) -> dict:
    """Both arms for one (setting, seed); returns their curves and final accuracies."""
    from rewardhub.recipes.rl import train_rl
    from rewardhub.reward_resolution import build_reward

    out = Path(args.out) / f"{setting}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = reft_recipe(args, setting, seed, out / "reft")
    provider = build_reward("verifier", {})
    try:
        t0 = time.perf_counter()
        warm = sft_run(cfg, out / "reft" / "sft-warmup", cfg.sft_warmup_steps, None, provider)
        warm_s = warm[-1]["train_s"]
        base_model = cfg.model
        cfg.model = str(out / "reft" / "sft-warmup" / "model")
        train_rl(cfg, provider=provider)
        cfg.model = base_model  # the SFT-only arm starts from the same untrained model as the warm-up
        rl = eval_rows(out / "reft")
        reft_s = warm_s + rl[-1]["train_s"]
        wall_reft = time.perf_counter() - t0
        # SFT only, for the training time ReFT took: steps from the warm-up's own speed, max_time as the guard.
        steps = max(int(cfg.sft_warmup_steps * reft_s / max(warm_s, 1e-9)), 1)
        t0 = time.perf_counter()
        sft = sft_run(cfg, out / "sft-only", steps, reft_s, provider)
        wall_sft = time.perf_counter() - t0
    finally:
        provider.close()
    reft_curve = warm + [{**r, "train_s": warm_s + r["train_s"], "rl_step": r["step"]} for r in rl[1:]]
    return {"setting": setting, "seed": seed, "teacher_error": SETTINGS[setting],
            "warmup": {"steps": cfg.sft_warmup_steps, "train_s": warm_s, "accuracy": warm[-1]["accuracy"],
                       "start_model": base_model},
            "reft": {"rl_algo": cfg.algo, "rl_steps": cfg.max_steps, "train_s": reft_s, "wall_s": wall_reft,
                     "accuracy": rl[-1]["accuracy"], "curve": reft_curve},
            "sft_only": {"start_model": base_model, "steps_planned": steps, "steps": sft[-1]["step"],
                         "train_s": sft[-1]["train_s"], "wall_s": wall_sft, "accuracy": sft[-1]["accuracy"],
                         "curve": sft}}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(r["setting"] for r in results))
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.2), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for r in (r for r in results if r["setting"] == setting):
            for arm, color in (("sft_only", "tab:blue"), ("reft", "tab:red")):
                curve = r[arm]["curve"]
                label = {"sft_only": "SFT only", "reft": f"SFT then {r['reft']['rl_algo'].upper()}"}[arm]
                ax.plot([p["train_s"] for p in curve], [100 * p["accuracy"] for p in curve], color=color,
                        alpha=0.8, marker=".", label=label if r["seed"] == results[0]["seed"] else None)
            ax.axvline(r["warmup"]["train_s"], color="tab:red", alpha=0.2, linestyle=":")
        ax.set_title(f"{setting} teacher (teacher_error={SETTINGS[setting]})")
        ax.set_xlabel("training seconds (1 CPU thread; evaluations left out)")
        ax.set_ylabel("held-out accuracy, % (verifier, greedy)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle("arithmetic-cot, built-in tiny model: each line one seed; dotted: end of the SFT warm-up")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results: list[dict]) -> str:
    lines = ["| setting | seed | SFT only | SFT warm-up | SFT then GRPO | ReFT - SFT only | training s (SFT / ReFT) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        a, w, b = r["sft_only"], r["warmup"], r["reft"]
        lines.append(f"| {r['setting']} | {r['seed']} | {a['accuracy']:.1%} ({a['steps']} steps) | {w['accuracy']:.1%} "
                     f"({w['steps']} steps) | {b['accuracy']:.1%} (+{b['rl_steps']} RL steps) | "
                     f"{100 * (b['accuracy'] - a['accuracy']):+.1f} points | {a['train_s']:.0f} / {b['train_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=1, help="(setting, seed) pairs run at once, 1 thread each")
    p.add_argument("--eval-size", type=int, default=500, help="held-out test problems (the test split has 500)")
    p.add_argument("--out", default="runs/reft-vs-sft")
    p.add_argument("--quick", action="store_true", help="a smoke run: a few steps, 16 problems, seed 0 only")
    p.add_argument("--pair", nargs=2, metavar=("SETTING", "SEED"), help=argparse.SUPPRESS)  # one worker's share
    args = p.parse_args()
    if args.quick:
        args.eval_size, args.seeds = min(args.eval_size, 16), args.seeds[:1]
    out = Path(args.out)
    if args.pair:
        result = run_pair(args, args.pair[0], int(args.pair[1]))
        (out / f"{args.pair[0]}-seed{args.pair[1]}" / "pair.json").write_text(json.dumps(result, indent=2))
        return
    out.mkdir(parents=True, exist_ok=True)
    pairs = [(s, seed) for s in args.settings for seed in args.seeds]
    base = [sys.executable, os.path.abspath(__file__), "--out", str(out), "--eval-size", str(args.eval_size)]
    base += ["--quick"] if args.quick else []

    def work(pair):
        setting, seed = pair
        log = out / f"{setting}-seed{seed}.log"
        with log.open("w") as f:
            code = subprocess.call([*base, "--pair", setting, str(seed)], stdout=f, stderr=subprocess.STDOUT)
        if code:
            raise SystemExit(f"{setting} seed {seed} failed (exit {code}); see {log}")
        result = json.loads((out / f"{setting}-seed{seed}" / "pair.json").read_text())
        print(f"done: {setting} seed {seed}: SFT only {result['sft_only']['accuracy']:.1%}, "
              f"ReFT {result['reft']['accuracy']:.1%}", flush=True)
        return result

    with ThreadPoolExecutor(max(args.jobs, 1)) as pool:
        results = list(pool.map(work, pairs))
    (out / "result.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "reft_vs_sft.png")
    print(f"held-out accuracy on {args.eval_size} test problems (verifier, greedy), equal training time per arm:")
    print(table(results))
    for setting in args.settings:
        gaps = [100 * (r["reft"]["accuracy"] - r["sft_only"]["accuracy"]) for r in results if r["setting"] == setting]
        print(f"{setting}: ReFT - SFT only = {', '.join(f'{g:+.1f}' for g in gaps)} points "
              f"(mean {sum(gaps) / len(gaps):+.1f})")
    print(f"plot: {out / 'reft_vs_sft.png'}; every run: {out / 'result.json'}")


if __name__ == "__main__":
    main()
