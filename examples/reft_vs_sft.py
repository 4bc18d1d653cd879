"""SFT alone vs SFT then ReFT (RL against the verifier) at equal wall-clock, on held-out arithmetic.

Both arms start from the built-in tiny model and get the same time budget:

* (a) SFT for the whole budget (one run, its own cosine schedule);
* (b) SFT for ``--sft-share`` of the budget (the ReFT warm-up), then GRPO/PPO against the ``verifier``
  reward (1 correct / 0.1 wrong / 0 no answer) for the rest.

Time is turned into step counts by measuring: a short SFT probe gives arm (a)'s step count; arm (b) then gets
exactly the wall time arm (a) took: ``--sft-share`` of arm (a)'s steps of SFT, a short RL probe from that
warm-up model (its time counted), and as many RL steps as fit in what is left. Both final models are then
scored the same way: greedy exact match on the same held-out problems (the task's test split, disjoint from
training). Step times depend on the machine and on whatever else runs on it, so the wall times actually
spent are printed beside the accuracies.

Run: python examples/reft_vs_sft.py [--budget-s 240] [--out runs/reft-vs-sft] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from rewardhub.config import RLConfig, SFTConfig


class StepClock:
    """A train callback that records when each step finished."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, step: int, metrics: dict) -> None:
        self.times.append(time.perf_counter())

    def seconds_per_step(self, skip: int) -> float:
        t = self.times[skip:]
        return (t[-1] - t[0]) / max(len(t) - 1, 1)


def sft_config(args, out: Path, steps: int, model: str = "builtin:tiny-llama") -> SFTConfig:
    return SFTConfig(model=model, data="arithmetic", out=str(out), max_steps=steps, seed=args.seed,
                     eval_every=0, eval_size=8, save_every=0, log_every=max(steps // 10, 1), resume=False,
                     threads=args.threads)


def rl_config(args, model: str, out: Path, steps: int) -> RLConfig:
    return RLConfig(model=model, data="arithmetic", reward="verifier", out=str(out), max_steps=steps,
                    algo=args.rl_algo, batch_size=args.rl_batch, num_generations=args.rl_generations,
                    temperature=args.rl_temperature, lr=args.rl_lr, warmup_ratio=args.rl_warmup_ratio,
                    kl_coef=args.rl_kl, max_new_tokens=8, seed=args.seed, eval_every=0, eval_size=8,
                    save_every=0, log_every=max(steps // 10, 1), completions_every=0, resume=False,
                    threads=args.threads)


def run_sft(cfg: SFTConfig, clock: StepClock | None = None) -> str:
    from rewardhub.algorithms.sft import train_sft

    train_sft(cfg, callbacks=[clock] if clock else [])
    return str(Path(cfg.out) / "model")


def run_rl(cfg: RLConfig, provider, clock: StepClock | None = None) -> str:
    from rewardhub.algorithms.ppo import train_rl

    return train_rl(cfg, callbacks=[clock] if clock else [], provider=provider)["model_path"]


def held_out_accuracy(model_path: str, rows) -> float:
    from rewardhub.evaluation import exact_match_accuracy
    from rewardhub.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path, tokenizer=tokenizer).eval()
    return exact_match_accuracy(model, tokenizer, rows, max_new_tokens=8, batch_size=128)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=240.0,
                   help="training wall-clock per arm, seconds (two arms: ~2x this in all, plus probes and evaluation)")
    p.add_argument("--sft-share", type=float, default=0.75, help="arm (b): share of the budget spent on SFT")
    p.add_argument("--out", default="runs/reft-vs-sft")
    p.add_argument("--eval-size", type=int, default=500, help="held-out problems (the test split has 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rl-algo", default="grpo")
    p.add_argument("--rl-lr", type=float, default=3e-5)
    p.add_argument("--rl-batch", type=int, default=64, help="prompts per RL step")
    p.add_argument("--rl-generations", type=int, default=4)
    p.add_argument("--rl-temperature", type=float, default=0.7)
    p.add_argument("--rl-warmup-ratio", type=float, default=0.2)
    p.add_argument("--rl-kl", type=float, default=0.0)
    p.add_argument("--quick", action="store_true", help="a smoke run (20 s per arm, 100 problems)")
    args = p.parse_args()
    if args.quick:
        args.budget_s, args.eval_size = min(args.budget_s, 20.0), min(args.eval_size, 100)
    if not 0 < args.sft_share < 1:
        p.error("--sft-share must be in (0, 1)")

    from rewardhub.data import load_rows
    from rewardhub.reward_resolution import build_reward

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    rows = load_rows("arithmetic:test", None, {}, {})
    rows = rows.select(range(min(args.eval_size, len(rows))))

    # Timing probe: seconds per SFT step on this machine, now.
    probe_steps = 10 if args.quick else 30
    clock = StepClock()
    t0 = time.perf_counter()
    run_sft(sft_config(args, out / "probe-sft", probe_steps), clock)
    sft_s = clock.seconds_per_step(skip=3)
    print(f"probe: {sft_s:.3f} s per SFT step ({time.perf_counter() - t0:.0f} s probe)", flush=True)

    # (a) SFT for the whole budget.
    steps_a = max(int(args.budget_s / sft_s), 1)
    t0 = time.perf_counter()
    model_a = run_sft(sft_config(args, out / "sft-only", steps_a))
    wall_a = time.perf_counter() - t0

    # (b) SFT for part of arm (a)'s actual wall time (machine load drifts: the probe is only an estimate), then
    # RL for the rest of it; an RL probe from the warm-up model sets the RL step count and its time is counted.
    budget_b = wall_a
    steps_b = max(int(steps_a * args.sft_share), 1)
    provider = build_reward("verifier", {})
    try:
        t0 = time.perf_counter()
        warm = run_sft(sft_config(args, out / "reft" / "sft-warmup", steps_b))
        wall_b_sft = time.perf_counter() - t0
        rl_probe = StepClock()
        run_rl(rl_config(args, warm, out / "reft" / "probe-rl", 6 if args.quick else 15), provider, rl_probe)
        rl_s = rl_probe.seconds_per_step(skip=2)
        left = budget_b - (time.perf_counter() - t0)
        rl_steps = max(int(left / rl_s), 1)
        model_b = run_rl(rl_config(args, warm, out / "reft" / "rl", rl_steps), provider)
        wall_b = time.perf_counter() - t0
    finally:
        provider.close()

    acc_warm, acc_a, acc_b = (held_out_accuracy(m, rows) for m in (warm, model_a, model_b))
    result = {"budget_s": args.budget_s, "sft_s_per_step_probe": sft_s, "held_out": len(rows),
              "sft_only": {"steps": steps_a, "wall_s": round(wall_a, 1), "accuracy": acc_a},
              "reft": {"sft_steps": steps_b, "sft_wall_s": round(wall_b_sft, 1), "warmup_accuracy": acc_warm,
                       "rl_steps": rl_steps, "rl_algo": args.rl_algo, "wall_s": round(wall_b, 1), "accuracy": acc_b}}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"held-out greedy exact match on {len(rows)} test problems, budget {args.budget_s:.0f} s per arm:")
    print(f"  (a) SFT only:           {acc_a:6.1%}  ({steps_a} SFT steps, {wall_a:.0f} s)")
    print(f"  (b) SFT then {args.rl_algo.upper() + ':':<9} {acc_b:6.1%}  ({steps_b} SFT steps -> {acc_warm:.1%}, then "
          f"{rl_steps} RL steps; {wall_b:.0f} s)")
    print(f"  ReFT - SFT: {100 * (acc_b - acc_a):+.1f} points")


if __name__ == "__main__":
    main()
