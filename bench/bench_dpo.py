"""DPO training: rewardhub vs TRL's DPOTrainer on identical workloads.

(The reward-model comparison that used to be here is ``bench/bench_reward_model_vs_trl.py``: this script left
TRL on its bf16-autocast and gradient-checkpointing defaults, ran each side once, and counted tokens from a
formula, so its reward-model ratio moved between runs and machines. TRL's DPO side now runs fp32 without
checkpointing, like rewardhub's.)

Same model (a locally built Llama, char tokenizer; nothing is downloaded), same preference pairs
(arithmetic preferences), same batch size, steps, max length, learning rate, optimizer family (AdamW) and
thread count. Each run is a separate process, so peak RSS is per framework. Reported: median step time
(after warm-up), total wall time (load, tokenisation and reference log-probs included), tokens/s of the
training steps (the same token count for both: the pairs' prompt+reply tokens), peak RSS, and the ratio.

TRL is compared twice for DPO: its default (reference forward pass every step) and with
``precompute_ref_log_probs=True`` (rewardhub's default).

Needs TRL, which rewardhub does not depend on:

    pip install trl
    python bench/bench_dpo.py                       # defaults: hidden 256, 4 layers, batch 16, 30 steps
    python bench/bench_dpo.py --steps 50 --hidden 512 --threads 2

Works on CPU and on one GPU (``--device cuda``).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = ("rewardhub-dpo", "trl-dpo", "trl-dpo-precompute")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--pairs", type=int, default=0, help="pairs in the data (0: steps x batch size, one epoch)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the median step time")
    p.add_argument("--only", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    p.add_argument("--workdir", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def prepare(args, work: Path) -> tuple[Path, Path, float]:
    """Build the model and the pairs once; returns (model dir, data file, prompt+reply tokens per pair)."""
    from rewardhub.tiny_model import build_tiny_model, build_tokenizer
    from rewardhub_tasks.preferences import build_arithmetic_preferences

    model = work / "model"
    if not (model / "config.json").exists():
        build_tiny_model(model, seed=0, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                         num_key_value_heads=max(1, args.hidden // 64))
    data = work / "pairs.jsonl"
    rows = build_arithmetic_preferences("train", size=args.pairs or args.steps * args.batch_size, style="word", n_ops=2)
    with data.open("w") as f:
        for r in rows:
            f.write(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n")
    tok = build_tokenizer()
    n = [2 * len(tok(r["prompt"]).input_ids) + len(tok(r["chosen"]).input_ids) + len(tok(r["rejected"]).input_ids) + 2
         for r in rows]
    return model, data, statistics.fmean(n)


# ------------------------------------------------------------------------------------------------------------
# children: one framework each, timing every optimizer step
# ------------------------------------------------------------------------------------------------------------

def child(args, name: str, work: Path) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    model, data = work / "model", work / "pairs.jsonl"
    out = work / f"out-{name}"
    stamps: list[float] = []
    t0 = time.perf_counter()
    if name == "rewardhub-dpo":
        from rewardhub.config import DPOConfig
        from rewardhub.recipes.dpo import train_dpo

        cfg = DPOConfig(model=str(model), data=str(data), out=str(out), max_steps=args.steps,
                        batch_size=args.batch_size, lr=1e-5, warmup_ratio=0.0, max_length=args.max_length,
                        log_every=10**6, eval_every=0, save_every=0, threads=args.threads, resume=False,
                        lr_scheduler="linear")
        train_dpo(cfg, callbacks=[lambda step, m: stamps.append(time.perf_counter())])
    else:
        run_trl(args, name, model, data, out, stamps)
    total = time.perf_counter() - t0
    return {"stamps": stamps, "total_s": total, "t0": t0, "peak_rss_mb": peak_rss_mb()}


def run_trl(args, name, model_dir, data, out, stamps):
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    class Stamp(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            stamps.append(time.perf_counter())

    tok = AutoTokenizer.from_pretrained(model_dir)
    ds = datasets.load_dataset("json", data_files=str(data), split="train")
    common = dict(output_dir=str(out), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                  learning_rate=1e-5, lr_scheduler_type="linear", warmup_steps=0, logging_steps=10**6,
                  save_strategy="no", report_to="none", max_length=args.max_length, disable_dropout=True,
                  use_cpu=args.device == "cpu", dataloader_num_workers=0, seed=0,
                  bf16=False, fp16=False, gradient_checkpointing=False)  # TRL defaults to both; rewardhub: fp32, none
    from trl import DPOConfig, DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = DPOConfig(beta=0.1, precompute_ref_log_probs=name.endswith("precompute"), **common)
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Stamp()])
    trainer.train()


def peak_rss_mb() -> float:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


# ------------------------------------------------------------------------------------------------------------
# parent: run each child, summarise
# ------------------------------------------------------------------------------------------------------------

def summarise(result: dict, args, tokens_per_pair: float) -> dict:
    stamps = result["stamps"]
    steps = [b - a for a, b in itertools.pairwise(stamps)][max(args.warmup - 1, 0):]
    step_s = statistics.median(steps) if steps else float("nan")
    train_s = stamps[-1] - stamps[0] if len(stamps) > 1 else float("nan")
    tokens = tokens_per_pair * args.batch_size * (len(stamps) - 1)
    return {"step_s": step_s, "tokens_per_s": tokens / train_s if train_s else float("nan"),
            "total_s": result["total_s"], "peak_rss_mb": result["peak_rss_mb"], "steps": len(stamps)}


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_dpo_"))
    if args.child:
        print("RESULT " + json.dumps(child(args, args.child, work)))
        return 0
    wanted = [r for r in args.only.split(",") if r]
    if any(r.startswith("trl") for r in wanted) and importlib.util.find_spec("trl") is None:
        print("bench_dpo needs TRL for the comparison: pip install trl\n"
              "(rewardhub itself does not depend on it). Exiting without running.", file=sys.stderr)
        return 0
    if any(r.startswith("trl") for r in wanted):
        import trl

        print(f"trl {trl.__version__}")
    work.mkdir(parents=True, exist_ok=True)
    _, _, tokens_per_pair = prepare(args, work)
    print(f"model hidden={args.hidden} layers={args.layers}; batch {args.batch_size} pairs; {args.steps} steps; "
          f"{tokens_per_pair:.1f} tokens per pair; threads {args.threads}; device {args.device}")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    results = {}
    for name in wanted:
        cmd = [sys.executable, __file__, "--child", name, "--workdir", str(work)]
        for key in ("steps", "batch_size", "pairs", "hidden", "layers", "max_length", "threads", "device", "warmup"):
            cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            print(f"{name}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results[name] = summarise(json.loads(line[len("RESULT "):]), args, tokens_per_pair)
    print(f"\n{'run':22} {'step s':>8} {'tokens/s':>10} {'total s':>8} {'peak RSS MB':>12}")
    for name, r in results.items():
        print(f"{name:22} {r['step_s']:8.4f} {r['tokens_per_s']:10.0f} {r['total_s']:8.1f} {r['peak_rss_mb']:12.0f}")
    print()
    for ours, theirs in (("rewardhub-dpo", "trl-dpo"), ("rewardhub-dpo", "trl-dpo-precompute")):
        if ours in results and theirs in results:
            a, b = results[ours], results[theirs]
            print(f"{ours} vs {theirs}: step time {b['step_s'] / a['step_s']:.2f}x faster, total "
                  f"{b['total_s'] / a['total_s']:.2f}x, peak RSS {a['peak_rss_mb'] / b['peak_rss_mb']:.2f} of TRL's")
    (work / "bench_dpo.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
