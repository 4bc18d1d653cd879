"""GRPO step time, generated tokens/s and peak RSS: rewardhub's ``train_rl`` vs TRL's ``GRPOTrainer``.

The same workload goes through both frameworks, each in its own subprocess (so peak RSS is per framework):

* model: a random-init Llama written once with ``rewardhub.tiny_model.build_tiny_model`` (character tokenizer,
  distinct pad/eos) and loaded by both with ``from_pretrained``, fp32. ``small``: hidden 256, 4 layers,
  4 heads, intermediate 1024 (~4.2M parameters); ``large``: hidden 512, 8 layers, 8 heads, intermediate 2048
  (~33.6M parameters).
* data: 256 prompts ``a+b=`` (two-digit a, b). Two rewards (``--reward``): ``sparse``, the reference
  workload: 1.0 when the completion contains ``a+b``, else 0.0, which a random-init model almost never earns,
  so nearly every group of 4 scores all alike (zero advantage); ``dense``: the share of digits among the
  completion's characters, which differs within almost every group. ``zero-std groups`` in the table is the
  share of groups whose rewards are all equal, as both frameworks saw them.
* frameworks: ``trl``; ``rewardhub`` as shipped, which leaves zero-advantage rows out of the update's forward
  and backward (``skip_zero_advantage``; exact: those rows' gradient is 0); ``rewardhub-noskip``, the same
  with that off, so the table separates the skip from the rest of the loop; ``rewardhub-pipelined``, as
  shipped plus ``async_rollouts`` with ``max_staleness=1`` (step n+1's rollout sampled in a worker thread
  while step n scores and updates; the ``--threads`` torch threads split between trainer and generator, one
  each at ``--threads 2``).
* one step = 4 prompts x 4 samples = 16 sequences, up to 16 new tokens (EOS allowed), temperature 1.0, no
  top-k / top-p, one optimizer step per generation batch (rewardhub: batch_size=4, num_generations=4,
  ppo_epochs=1, minibatch_size=0, grad_accum=1; TRL: per_device_train_batch_size=16, num_generations=4,
  steps_per_generation=1, gradient_accumulation_steps=1, num_iterations=1), fused AdamW (transformers' default
  ``adamw_torch_fused``, and rewardhub's) lr 1e-5 constant, max grad norm 1.0, clip 0.2, group-std advantage
  scaling, beta = 0 (no reference model, no KL) in both, fp32,
  gradient checkpointing off, logging / evaluation / checkpointing off (as far as each framework allows),
  ``--threads`` torch threads (default 1: ``torch.set_num_threads(N)`` and ``OMP_NUM_THREADS=N``). The issue's
  configuration is ``--threads 2``: TRL and synchronous rewardhub with two threads, pipelined rewardhub with
  one for the trainer and one for the generator.

Measurement: a step's time is the wall time between the end of the previous step and the end of this one
(rewardhub: the ``callbacks`` of ``train_rl``; TRL: ``TrainerCallback.on_step_end``), so it covers everything
the loop does per step (data, generation, reward, update, bookkeeping). The first ``--warmup`` steps (and
setup: loading, building the trainer) are dropped; the median step time of the rest is reported. Neither
framework can force full-length completions the same way, so the generated tokens are counted per step in
both (completion tokens up to and including the first EOS) and tokens/s is the measured steps' tokens over
their total time. Peak RSS is the subprocess's ``VmHWM`` read right after its last step (before any final
save). rewardhub's own per-phase timings (``time/*`` metrics) and TRL's (the same phases, timed by wrapping
``_generate_single_turn`` and ``_calculate_rewards``) are printed as a breakdown, with generation-only
tokens/s. For ``rewardhub-pipelined`` ``gen ms`` is the worker's (overlapped) generation time and ``rest``
leaves out only the time the trainer waited for it; a last line compares its measured step with the ideal
pipelined step, ``max(generation, everything else)``, from the synchronous run's phases and from its own.
``--repeats N`` interleaves N runs per framework (load drift on a shared machine then hits both
alike) and pools their measured steps; ``--profile DIR`` cProfiles the measured steps of each framework.

    python bench/bench_grpo_vs_trl.py [--variant small|large|both] [--reward sparse|dense|both] [--steps 13]
                                      [--warmup 3] [--repeats 1] [--threads 1] [--json out.json] [--profile DIR]

TRL is needed only for this benchmark (``pip install trl``; keep the installed torch/transformers: if pip
wants to replace them use ``pip install --no-deps trl`` and add the small missing dependencies).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import VARIANTS, StepClock, build_model, peak_rss_mib, print_profile

FRAMEWORKS = ("trl", "rewardhub", "rewardhub-noskip", "rewardhub-pipelined")
PROMPTS_PER_STEP, GROUP, NEW_TOKENS, LR, SEED, N_PROMPTS = 4, 4, 16, 1e-5, 0, 256


# ------------------------------------------------------------------------------------------------------------
# Shared pieces (used inside the workers)
# ------------------------------------------------------------------------------------------------------------

def sum_reward(prompt: str, completion: str) -> float:
    """1.0 when the completion contains the sum the prompt ``a+b=`` asks for."""
    a, b = prompt.rstrip("=").split("+")
    return 1.0 if str(int(a) + int(b)) in completion else 0.0


def digit_share(prompt: str, completion: str) -> float:
    """Share of the completion's characters that are digits: a dense reward that varies within a group."""
    return sum(c.isdigit() for c in completion) / max(len(completion), 1)


REWARDS = {"sparse": sum_reward, "dense": digit_share}


def zero_std_share(values: list[float]) -> float:
    """Share of the groups (``GROUP`` consecutive samples of one prompt) whose rewards are all equal."""
    groups = [values[i:i + GROUP] for i in range(0, len(values), GROUP)]
    return sum(len(set(g)) == 1 for g in groups) / max(len(groups), 1)


# ------------------------------------------------------------------------------------------------------------
# Workers: one framework per process
# ------------------------------------------------------------------------------------------------------------

def run_rewardhub(model_dir: str, data_file: str, out_dir: str, steps: int, clock: StepClock, reward_fn,
                  skip: bool = True, threads: int = 1, pipelined: bool = False,
                  pipeline_threads: tuple[int, int] | None = None) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from rewardhub import rollout_pipeline
    from rewardhub.config import RLConfig

    if pipeline_threads:  # an experiment: another (trainer, generator) split than the shipped halves
        rollout_pipeline.split_threads = lambda total: pipeline_threads
    from rewardhub.recipes import rl as ppo
    from rewardhub.rewards import Reward, RewardProvider

    zero_std: list[float] = []

    class BenchProvider(RewardProvider):
        def score(self, samples):
            values = [reward_fn(s.prompt, s.completion) for s in samples]
            zero_std.append(zero_std_share(values))
            return [Reward(v) for v in values]

    cfg = RLConfig(
        model=model_dir, dtype="float32", gradient_checkpointing=False, algo="grpo", data=data_file,
        out=out_dir, seed=SEED, lr=LR, lr_scheduler="constant", warmup_ratio=0.0, weight_decay=0.0,
        max_steps=steps, batch_size=PROMPTS_PER_STEP, num_generations=GROUP, grad_accum=1, minibatch_size=0,
        ppo_epochs=1, max_new_tokens=NEW_TOKENS, temperature=1.0, top_p=1.0, top_k=0, max_grad_norm=1.0,
        clip_eps=0.2, scale_rewards=True, kl_coef=0.0, kl_in_reward=False, kl_loss_coef=0.0,
        log_every=steps, eval_every=0, save_every=0, completions_every=0, resume=False, threads=threads,
        report_to="none", skip_zero_advantage=skip, async_rollouts=pipelined, max_staleness=1,
    )
    n_seq = PROMPTS_PER_STEP * GROUP

    def on_step(step: int, metrics: dict[str, float]) -> None:
        # train_rl has no "setup done" hook: step 1's time includes setup, and step 1 is a warm-up step.
        # pipelined: "time/generation" is the wait for the worker's rollout, which generated it meanwhile
        generation = metrics.get("time/generation_worker", metrics["time/generation"])
        clock.step_end(metrics["completions/mean_length"] * n_seq,
                       generation=generation, generation_wait=metrics["time/generation"],
                       scoring=metrics["time/scoring"],
                       old_logprobs=metrics["time/forward"], update=metrics["time/update"],
                       reward=metrics.get("reward/mean", float("nan")), zero_std=zero_std[-1],
                       rows_skipped=metrics.get("update/frac_rows_skipped", 0.0))

    checks: dict[str, Any] = {}
    setup = ppo.setup

    def checked_setup(*a, **kw):  # record what the loop actually built (no behaviour change)
        run = setup(*a, **kw)
        policy = run.net.policy
        checks.update(gradient_checkpointing=bool(policy.is_gradient_checkpointing), dtype=str(policy.dtype),
                      ref_model=run.ref is not None, threads=torch.get_num_threads())
        if run.pipeline is not None:
            checks["threads"] = "trainer {}, generator {}".format(*run.pipeline.threads)
        return run

    ppo.setup = checked_setup
    ppo.train_rl(cfg, callbacks=[on_step], provider=BenchProvider())
    return {"steps": clock.steps, "peak_rss_mib": clock.peak_rss_last_step, "peak_rss_end_mib": peak_rss_mib(),
            "checks": checks}


def run_trl(model_dir: str, data_file: str, out_dir: str, steps: int, clock: StepClock, reward_fn,
            threads: int = 1) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    rows = [json.loads(line) for line in Path(data_file).read_text().splitlines()]
    dataset = Dataset.from_list(rows)
    tokens_per_call: list[int] = []
    phase = {"generation": 0.0, "scoring": 0.0, "zero_std": 0.0}

    def bench_reward_func(prompts, completions, completion_ids, **kwargs):
        tokens_per_call.append(sum(len(c) for c in completion_ids))  # up to and including EOS
        values = [reward_fn(p, c) for p, c in zip(prompts, completions)]
        phase["zero_std"] = zero_std_share(values)  # TRL repeats each prompt num_generations times in a row
        return values

    args = GRPOConfig(
        output_dir=out_dir, seed=SEED, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, max_steps=steps, per_device_train_batch_size=PROMPTS_PER_STEP * GROUP,
        gradient_accumulation_steps=1, steps_per_generation=1, num_generations=GROUP, num_iterations=1,
        max_completion_length=NEW_TOKENS, temperature=1.0, top_p=1.0, top_k=0, beta=0.0, epsilon=0.2,
        scale_rewards="group", disable_dropout=True, logging_strategy="no", save_strategy="no",
        eval_strategy="no", report_to="none", disable_tqdm=True, log_completions=False,
        dataloader_num_workers=0, model_init_kwargs={"dtype": "float32"},
    )

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.mark_ready()

        def on_step_end(self, args, state, control, **kwargs):
            clock.step_end(tokens_per_call[-1] if tokens_per_call else float("nan"), **phase)
            phase.update(generation=0.0, scoring=0.0, zero_std=0.0)

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left", truncation_side="left")
    trainer = GRPOTrainer(model=model_dir, reward_funcs=bench_reward_func, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Clock()])

    def timed(fn, name):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                phase[name] += time.perf_counter() - t0
        return wrapper

    trainer._generate_single_turn = timed(trainer._generate_single_turn, "generation")
    trainer._calculate_rewards = timed(trainer._calculate_rewards, "scoring")
    model = trainer.model
    checks = {"gradient_checkpointing": bool(model.is_gradient_checkpointing), "dtype": str(model.dtype),
              "ref_model": trainer.ref_model is not None, "threads": torch.get_num_threads()}
    trainer.train()
    return {"steps": clock.steps, "peak_rss_mib": clock.peak_rss_last_step, "peak_rss_end_mib": peak_rss_mib(),
            "trl_version": trl.__version__, "checks": checks}


def worker(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    reward_fn = REWARDS[args.reward]
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    clock = StepClock(args.steps, args.warmup, profiler)
    with tempfile.TemporaryDirectory(prefix=f"bench_{args.worker}_") as out:
        if args.worker == "trl":
            result = run_trl(args.model_dir, args.data_file, out, args.steps, clock, reward_fn, args.threads)
        else:
            result = run_rewardhub(args.model_dir, args.data_file, out, args.steps, clock, reward_fn,
                                   skip=args.worker != "rewardhub-noskip", threads=args.threads,
                                   pipelined=args.worker == "rewardhub-pipelined",
                                   pipeline_threads=args.pipeline_threads)
    result["wall_s"] = time.perf_counter() - t0
    if profiler is not None:
        profiler.dump_stats(args.profile)
    Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------------------

def write_prompts(path: Path) -> None:
    rng = random.Random(SEED)
    with path.open("w") as f:
        for _ in range(N_PROMPTS):
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            f.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")


def summarize(runs: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Pool the measured steps (after ``warmup``) of every repeat: median step time, tokens/s, peak RSS."""
    steps = [s for res in runs for s in res["steps"][warmup:]]
    if not steps:
        raise SystemExit(f"no measured steps: --steps must exceed --warmup ({warmup})")
    total_t = sum(s["time"] for s in steps)
    total_tok = sum(s["tokens"] for s in steps)
    out = {"median_step_s": statistics.median(s["time"] for s in steps), "measured_steps": len(steps),
           "repeats": len(runs), "measured_total_s": total_t, "tokens_per_step": total_tok / len(steps),
           "tokens_per_s": total_tok / total_t,
           "tokens_per_s_median_step": statistics.median(s["tokens"] / s["time"] for s in steps),
           "peak_rss_mib": max(res["peak_rss_mib"] for res in runs),
           "peak_rss_end_mib": max(res["peak_rss_end_mib"] for res in runs),
           "wall_s": [res["wall_s"] for res in runs]}
    for key in ("generation", "generation_wait", "scoring", "old_logprobs", "update"):
        if all(key in s for s in steps):
            out[f"median_{key}_s"] = statistics.median(s[key] for s in steps)
    for key in ("zero_std", "rows_skipped"):
        if all(key in s for s in steps):
            out[f"mean_{key}"] = statistics.fmean(s[key] for s in steps)
    if all("generation" in s for s in steps):  # generation alone: tokens over the time spent sampling them
        out["generation_tokens_per_s"] = total_tok / sum(s["generation"] for s in steps)
    return out


def run_worker(framework: str, model_dir: Path, data_file: Path, reward: str, args: argparse.Namespace,
               tmp: Path, profile: Path | None) -> dict[str, Any]:
    result = tmp / f"{framework}.json"
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "CUDA_VISIBLE_DEVICES": "",
           "TRL_EXPERIMENTAL_SILENCE": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", framework, "--model-dir", str(model_dir),
           "--data-file", str(data_file), "--reward", reward, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--result", str(result), "--threads", str(args.threads),
           *(["--pipeline-threads", ",".join(map(str, args.pipeline_threads))] if args.pipeline_threads else [])]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not result.exists():
        sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-10000:])
        raise SystemExit(f"{framework} worker failed (exit {proc.returncode})")
    return json.loads(result.read_text())


def print_table(title: str, n_params: int, rows: dict[str, dict[str, Any]]) -> None:
    r0 = rows["trl"]
    print(f"\n== {title}: {n_params / 1e6:.2f}M parameters, {PROMPTS_PER_STEP}x{GROUP} sequences/step, "
          f"{NEW_TOKENS} new tokens, {r0['measured_steps']} measured steps ({r0['repeats']} run(s) each) ==")
    head = (f"{'framework':19s} {'step ms':>8s} {'tok/step':>8s} {'tokens/s':>9s} {'peak RSS MiB':>12s}  "
            f"{'gen ms':>7s} {'reward ms':>9s} {'old-lp ms':>9s} {'rest ms':>8s} {'gen tok/s':>9s} "
            f"{'zero-std groups':>15s} {'rows skipped':>12s}")
    print(head)
    print("-" * len(head))
    for name in FRAMEWORKS:
        r = rows[name]
        gen, score = r.get("median_generation_s", float("nan")), r.get("median_scoring_s", float("nan"))
        old = r.get("median_old_logprobs_s", 0.0)
        rest = r["median_step_s"] - r.get("median_generation_wait_s", gen) - score - old
        old_txt = f"{old * 1e3:9.1f}" if "median_old_logprobs_s" in r else f"{'-':>9s}"
        skipped = f"{r['mean_rows_skipped']:12.0%}" if "mean_rows_skipped" in r else f"{'-':>12s}"
        print(f"{name:19s} {r['median_step_s'] * 1e3:8.1f} {r['tokens_per_step']:8.1f} {r['tokens_per_s']:9.1f} "
              f"{r['peak_rss_mib']:12.1f}  {gen * 1e3:7.1f} {score * 1e3:9.1f} {old_txt} {rest * 1e3:8.1f} "
              f"{r.get('generation_tokens_per_s', float('nan')):9.1f} {r.get('mean_zero_std', float('nan')):15.0%} "
              f"{skipped}")
    b = rows["trl"]
    for name in FRAMEWORKS[1:]:
        a = rows[name]
        speed = a["tokens_per_s"] / b["tokens_per_s"]
        mem = a["peak_rss_mib"] / b["peak_rss_mib"]
        verdict = "MET" if speed >= 2.0 and mem <= 1.0 else "NOT MET"
        target = "target (>= 2x tokens/s at <= TRL's peak RSS)"
        if name == "rewardhub-pipelined":
            verdict, target = ("MET" if mem <= 1.2 else "NOT MET"), "peak RSS target (<= 1.2x TRL's)"
        gen_speed = a.get("generation_tokens_per_s", float("nan")) / b.get("generation_tokens_per_s", float("nan"))
        print(f"{name}/TRL: tokens/s {speed:.2f}x, median step time {a['median_step_s'] / b['median_step_s']:.2f}x, "
              f"peak RSS {mem:.2f}x, generation-only tokens/s {gen_speed:.2f}x; {target}: {verdict}")
    print(pipeline_line(rows["rewardhub"], rows["rewardhub-pipelined"]))
    print("(step = wall time between consecutive step ends; gen/reward/old-lp = median time in generation, reward "
          "scoring and rewardhub's separate old-log-prob pass; rest = step - those: loss forward/backward, "
          "optimizer, bookkeeping; gen tok/s = generated tokens / time in generation; zero-std groups = share of "
          "groups whose rewards were all equal; rows skipped = share of rows left out of the update)")


def pipeline_line(sync: dict[str, Any], piped: dict[str, Any]) -> str:
    """The pipelined step measured against the ideal ``max(generation, the rest)``, two ways.

    From the synchronous run: its median generation and its median step minus that (what could overlap, at
    the synchronous run's thread count). From the pipelined run itself: the worker's median generation time
    and the median step minus the time the trainer waited for the rollout (both slowed by sharing the CPU).
    """
    ideal_sync = max(sync["median_generation_s"], sync["median_step_s"] - sync["median_generation_s"])
    own_rest = piped["median_step_s"] - piped["median_generation_wait_s"]
    ideal_own = max(piped["median_generation_s"], own_rest)
    step = piped["median_step_s"]
    return (f"pipelined step {step * 1e3:.1f} ms vs ideal max(generation, rest): {ideal_sync * 1e3:.1f} ms from the "
            f"synchronous run's phases ({step / ideal_sync:.2f}x), {ideal_own * 1e3:.1f} ms from its own (generation "
            f"{piped['median_generation_s'] * 1e3:.1f} ms in the worker, rest {own_rest * 1e3:.1f} ms; "
            f"{step / ideal_own:.2f}x); synchronous step {sync['median_step_s'] * 1e3:.1f} ms")


def run_frameworks(model_dir: Path, data_file: Path, variant: str, reward: str, args: argparse.Namespace,
                   tmp: Path) -> tuple[dict[str, dict[str, Any]], list[float]]:
    """``--repeats`` interleaved runs of every framework on one workload; their pooled summaries."""
    runs: dict[str, list[dict[str, Any]]] = {f: [] for f in FRAMEWORKS}
    loads = []
    for rep in range(args.repeats):
        for framework in FRAMEWORKS if rep % 2 == 0 else FRAMEWORKS[::-1]:
            prof = args.profile / f"{variant}_{reward}_{framework}.prof" if args.profile and rep == 0 else None
            raw = run_worker(framework, model_dir, data_file, reward, args, tmp, prof)
            runs[framework].append(raw)
            loads.append(os.getloadavg()[0])
            print(f"  {variant} {reward} {framework} run {rep + 1}: {raw['wall_s']:.1f}s, load {loads[-1]:.2f}",
                  flush=True)
    rows = {f: summarize(runs[f], args.warmup) for f in FRAMEWORKS}
    for f in FRAMEWORKS:
        rows[f]["raw_steps"] = [r["steps"] for r in runs[f]]
        rows[f]["checks"] = runs[f][0].get("checks", {})
        print(f"  {f} as run: {rows[f]['checks']}")
    return rows, loads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=["small", "large", "both"], default="small")
    ap.add_argument("--reward", choices=["sparse", "dense", "both"], default="both",
                    help="sparse: the reference workload (1 when the completion contains the sum); dense: the share "
                         "of digits in the completion (default: both)")
    ap.add_argument("--steps", type=int, default=13, help="optimizer steps per framework run (default 13)")
    ap.add_argument("--warmup", type=int, default=3, help="leading steps of each run dropped from the statistics")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs per framework, interleaved (TRL, rewardhub, rewardhub, TRL, ...) so load drift on a "
                         "shared machine hits both alike; measured steps are pooled")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per framework process (default 1); the pipelined variant splits them "
                         "between trainer and generator (2: one each)")
    ap.add_argument("--pipeline-threads", type=lambda v: tuple(int(x) for x in v.split(",")), default=None,
                    metavar="T,G", help="pipelined: torch threads of the trainer and of the generator instead of "
                                        "halves of --threads (an experiment; they may oversubscribe the cores)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="cProfile the measured steps of each framework's first run, write DIR/<variant>_<framework>"
                         ".prof and print the top functions (timings are then inflated by the profiler)")
    ap.add_argument("--profile-top", type=int, default=30, help="functions printed per profile listing")
    ap.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--data-file", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.steps <= args.warmup:
        ap.error(f"--steps ({args.steps}) must be larger than --warmup ({args.warmup})")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    if importlib.util.find_spec("trl") is None:
        print("TRL is not installed; this benchmark compares against trl.GRPOTrainer. Install it with\n"
              "    pip install trl\n(or `pip install --no-deps trl` plus its small missing dependencies, so pip "
              "does not replace torch/transformers), then run this script again.")
        return
    from importlib.metadata import version

    import torch

    print(f"rewardhub vs TRL GRPO | trl {version('trl')}, transformers {version('transformers')}, "
          f"torch {torch.__version__}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.threads} torch "
          "thread(s) per process")
    load_start = os.getloadavg()
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}", flush=True)
    variants = ["small", "large"] if args.variant == "both" else [args.variant]
    report: dict[str, Any] = {"trl_version": version("trl"), "torch_version": torch.__version__,
                              "transformers_version": version("transformers"), "steps": args.steps,
                              "warmup": args.warmup, "repeats": args.repeats, "threads": args.threads,
                              "profiled": args.profile is not None,
                              "loadavg_start": load_start, "variants": {}}
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_grpo_vs_trl_") as tmp_name:
        tmp = Path(tmp_name)
        data_file = tmp / "prompts.jsonl"
        write_prompts(data_file)
        rewards = ["sparse", "dense"] if args.reward == "both" else [args.reward]
        for variant in variants:
            model_dir = tmp / f"model-{variant}"
            n_params = build_model(model_dir, variant)
            for reward in rewards:
                title = f"{variant}, {reward} reward"
                rows, loads = run_frameworks(model_dir, data_file, variant, reward, args, tmp)
                print_table(title, n_params, rows)
                if args.profile:
                    for f in FRAMEWORKS:
                        print_profile(args.profile / f"{variant}_{reward}_{f}.prof", args.profile_top)
                b = rows["trl"]
                report["variants"][f"{variant}/{reward}"] = {
                    "n_params": n_params, "config": VARIANTS[variant], "reward": reward,
                    "loadavg_1min_after_runs": loads, **rows,
                    **{f"ratio_{key}_{name}": rows[name][field] / b[field] for name in FRAMEWORKS[1:]
                       for key, field in (("tokens_per_s", "tokens_per_s"), ("step_time", "median_step_s"),
                                          ("peak_rss", "peak_rss_mib"),
                                          ("generation_tokens_per_s", "generation_tokens_per_s"))},
                }
    load_end = os.getloadavg()
    report["loadavg_end"] = load_end
    print(f"\nload average at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} "
          f"(the machine has {os.cpu_count()} CPUs; each worker uses {args.threads} thread(s))")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
