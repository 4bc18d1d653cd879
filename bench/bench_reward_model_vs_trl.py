"""Reward-model training tokens/s, step time and peak RSS: rewardhub's ``train_reward_model`` vs TRL's
``RewardTrainer``, as a ratio that holds within one run.

Why this script replaces the reward-model half of ``bench/bench_dpo.py``, whose ratio moved between 0.93x and
14.6x: that script (1) left TRL on its own defaults, ``bf16=True`` (CPU autocast to bfloat16: slow on a CPU
without native bf16 such as this one, fast on one with AMX, so the figure depended on the machine) and
``gradient_checkpointing=True`` (an extra forward per step), while rewardhub trained in fp32 without
checkpointing: two different workloads; (2) ran each framework once, one after the other, for 20 steps, so load
on a shared machine landed on one side only; (3) counted tokens from a formula, not from what each framework
fed its model. Here both train the same thing, the tokens are counted from the batches, and runs interleave.
``--with-trl-defaults`` adds TRL as bench_dpo ran it (``trl-defaults``), to show the first effect.

* model: a random-init Llama (``rewardhub.tiny_model.build_tiny_model``, char tokenizer, distinct pad/eos,
  512 positions) loaded by both as ``AutoModelForSequenceClassification`` with one label, fp32. ``small``
  (~4.2M parameters), ``large`` (~33.6M), ``tiny`` (a run check) as in ``bench/_common.py``.
* data: 1,024 (prompt, chosen, rejected) rows of random words: prompt 16-64 tokens, chosen and rejected
  32-192 each (skewed towards short), so a scored sequence (prompt + reply + EOS) spans 49-257 tokens.
  Every sequence fits ``max_length`` (512), so TRL filters none out and rewardhub cuts none: both score
  identical token sequences. TRL scores chosen and rejected in one right-padded forward of 2 x batch rows;
  rewardhub in groups of similar length (``rewardhub.batching.length_groups``: the same scores and gradients,
  less padding); ``--with-nogroups`` adds rewardhub with one padded forward (``rewardhub-nogroups``).
* training: batch 16 pairs, one micro-batch per step, fused AdamW lr 1e-4 constant, no warm-up, weight decay
  0, max grad norm 1.0, fp32, no gradient checkpointing, no centring term, no margin, dropout off, logging /
  evaluation / checkpointing off as far as each allows, ``--threads`` torch threads (default 2). rewardhub's
  calibration pass runs after the last step (not timed); TRL has none.

Measurement (as ``bench/bench_sft_vs_trl.py``): a step's time is the wall time between consecutive step ends
(the first from the end of setup), the first ``--warmup`` steps of each run dropped; the tokens of a step are
the non-pad tokens of the training forwards (attention mask), counted the same way in both; peak RSS =
``VmHWM`` after the last step. Both draw the same batches (seed 0: ``torch.randperm`` from a generator seeded
0 + epoch in both), so the headline ratio is the median, over matched steps (step s of a run against step s of
the other framework's run beside it), of their tokens/s ratio, with quartiles; the pooled ratio and every
back-to-back run pair's ratio are printed beside it, so the spread is visible, and so is the same median per
CPU second of the process (with one thread, blind to the time spent waiting for a core). ``--repeats`` interleaves runs.

    python bench/bench_reward_model_vs_trl.py [--variant small|large|both|tiny] [--steps 23] [--warmup 3]
                                              [--repeats 3] [--threads 2] [--with-nogroups] [--with-trl-defaults]
                                              [--json F]
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from _common import (
    StepClock,
    bench_parser,
    driver_ready,
    peak_rss_mib,
    print_step_table,
    random_text,
    run_benchmark,
    train_trl,
    worker_main,
)

FRAMEWORKS = ("trl", "rewardhub", "rewardhub-nogroups", "trl-defaults")
BATCH, LR, SEED, N_PAIRS, MAX_LENGTH, POSITIONS = 16, 1e-4, 0, 1024, 512, 512


# ------------------------------------------------------------------------------------------------------------
# Workers: one framework per process
# ------------------------------------------------------------------------------------------------------------

def run_rewardhub(model_dir: str, data_file: str, out_dir: str, steps: int, threads: int, clock: StepClock,
                  groups: bool = True) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from rewardhub import batching
    from rewardhub.config import RewardModelConfig
    from rewardhub.recipes import reward_model as rm

    if not groups:
        batching.MAX_LENGTH_GROUPS = 1

    cfg = RewardModelConfig(
        model=model_dir, dtype="float32", gradient_checkpointing=False, data=data_file, out=out_dir, seed=SEED,
        lr=LR, lr_scheduler="constant", warmup_ratio=0.0, weight_decay=0.0, max_steps=steps, batch_size=BATCH,
        grad_accum=1, max_grad_norm=1.0, max_length=MAX_LENGTH, center_coef=0.0, use_margin=False,
        calibration_size=64, log_every=steps, eval_every=0, save_every=0, resume=False, threads=threads,
        report_to="none",
    )
    checks: dict[str, Any] = {}
    setup, score = rm.RewardModel.setup, rm.score_sequences

    def timed_setup(self, accelerator):  # the clock starts when the model, data and optimizer are ready
        state = setup(self, accelerator)
        checks.update(gradient_checkpointing=bool(state.model.is_gradient_checkpointing),
                      dtype=str(state.model.dtype), threads=torch.get_num_threads(),
                      fused=bool(state.optimizer.param_groups[0].get("fused")), pairs=len(state.examples))
        clock.mark_ready()
        return state

    def counted_score(model, ids, mask):
        if torch.is_grad_enabled():  # training forwards only (calibration runs under no_grad)
            clock.add(tokens=int(mask.sum()), padded=int(mask.numel()), sequences=int(mask.size(0)))
        return score(model, ids, mask)

    rm.RewardModel.setup, rm.score_sequences = timed_setup, counted_score
    rm.train_reward_model(cfg, callbacks=[lambda step, metrics: clock.step_end(loss=metrics["loss"])])
    return {"steps": clock.steps, "peak_rss_mib": clock.peak_rss_last_step, "peak_rss_end_mib": peak_rss_mib(),
            "setup_s": clock.setup_s, "checks": checks}


def run_trl(model_dir: str, data_file: str, out_dir: str, steps: int, threads: int, clock: StepClock,
            trl_defaults: bool = False) -> dict[str, Any]:
    """TRL's RewardTrainer on the same workload; ``trl_defaults``: with its own bf16 and checkpointing defaults
    (what ``bench/bench_dpo.py`` measured)."""
    import torch

    torch.set_num_threads(threads)
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    rows = [json.loads(line) for line in Path(data_file).read_text().splitlines()]
    same = {} if trl_defaults else {"bf16": False, "fp16": False, "gradient_checkpointing": False}
    args = RewardConfig(
        output_dir=out_dir, seed=SEED, use_cpu=True, learning_rate=LR, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, max_steps=steps, per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1, max_length=MAX_LENGTH, center_rewards_coefficient=None,
        disable_dropout=True, logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
        disable_tqdm=True, dataloader_num_workers=0, model_init_kwargs={"dtype": "float32"}, **same,
    )
    def count(clock, inputs):
        mask = inputs["attention_mask"]
        clock.add(tokens=int(mask.sum()), padded=int(mask.numel()), sequences=int(mask.size(0)))

    return train_trl(RewardTrainer, clock, count, {}, model=model_dir, args=args,
                     train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(model_dir))


def run_trl_defaults(*a, **kw) -> dict[str, Any]:
    return run_trl(*a, **kw, trl_defaults=True)


def run_rewardhub_nogroups(*a, **kw) -> dict[str, Any]:
    return run_rewardhub(*a, **kw, groups=False)


WORKERS = {"trl": run_trl, "rewardhub": run_rewardhub, "rewardhub-nogroups": run_rewardhub_nogroups,
           "trl-defaults": run_trl_defaults}


# ------------------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------------------

def write_pairs(path: Path, n_pairs: int = N_PAIRS) -> list[int]:
    """(prompt, chosen, rejected) rows of 49-257-token sequences; returns the scored sequences' lengths."""
    rng = random.Random(SEED)
    lengths = []
    with path.open("w") as f:
        for _ in range(n_pairs):
            prompt = rng.randint(16, 64)
            chosen, rejected = (32 + int(160 * rng.betavariate(1.5, 3.0)) for _ in range(2))
            f.write(json.dumps({"prompt": random_text(rng, prompt - 1) + "\n", "chosen": random_text(rng, chosen),
                                "rejected": random_text(rng, rejected)}) + "\n")
            lengths += [prompt + chosen + 1, prompt + rejected + 1]  # + EOS
    return lengths


def print_table(variant: str, n_params: int, frameworks, rows: dict[str, Any], lines: list[str],
                mean_len: float) -> None:
    print_step_table(
        f"reward model {variant}: {n_params / 1e6:.2f}M parameters, batch {BATCH} pairs ({2 * BATCH} sequences of "
        f"49-257 tokens, mean {mean_len:.0f})", frameworks, rows, lines,
        legend="(tok/step = non-pad tokens of the training forward, chosen and rejected together; pad share = "
               "padded slots that are padding; tokens/s = pooled tokens / pooled step time; matched steps = step s "
               "of each run against step s of the run beside it; run pairs = pooled ratio of each back-to-back pair)")


def main() -> None:
    global BATCH
    ap = bench_parser(__doc__, FRAMEWORKS, steps=23, repeats=3)
    ap.add_argument("--variant", choices=["small", "large", "both", "tiny"], default="small")
    ap.add_argument("--batch-size", type=int, default=BATCH, help=f"pairs per optimizer step (default {BATCH})")
    ap.add_argument("--with-nogroups", action="store_true",
                    help="also run rewardhub with one padded forward per batch (no length groups), as TRL does")
    ap.add_argument("--with-trl-defaults", action="store_true",
                    help="also run TRL on its defaults (bf16 autocast, gradient checkpointing), as bench_dpo.py did")
    args = ap.parse_args()
    BATCH = args.batch_size  # read by the workers and the table
    if args.worker:
        worker_main(args, WORKERS[args.worker], "bench_rm")
        return
    if not driver_ready(ap, args, "RewardTrainer"):
        return
    frameworks = [f for f in FRAMEWORKS if (f != "rewardhub-nogroups" or args.with_nogroups)
                  and (f != "trl-defaults" or args.with_trl_defaults)]
    comparisons = [("rewardhub", "trl", None, ""), ("rewardhub-nogroups", "trl", None, ""),
                   ("rewardhub", "trl-defaults", None, " (TRL's defaults: bf16 autocast + gradient checkpointing)")]
    run_benchmark(__file__, args, "reward model", frameworks, write_pairs, comparisons, print_table, POSITIONS, BATCH)


if __name__ == "__main__":
    main()
