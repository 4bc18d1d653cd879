"""SFT training tokens/s, step time and peak RSS: rewardhub's ``train_sft`` vs TRL's ``SFTTrainer``.

The same workload goes through both frameworks, each in its own subprocess (so peak RSS is per framework):

* model: a random-init Llama written once with ``rewardhub.tiny_model.build_tiny_model`` (character tokenizer,
  distinct pad/eos, 512 positions) and loaded by both with ``from_pretrained``, fp32. ``small``: hidden 256,
  4 layers, 4 heads, intermediate 1024 (~4.2M parameters); ``large``: hidden 512, 8 layers, 8 heads,
  intermediate 2048 (~33.6M); ``tiny`` (hidden 64, 2 layers) only checks that the script runs.
* data: 2,048 prompt/completion rows of random words, lengths drawn so that prompt + completion + EOS spans
  64-256 tokens (prompt 16-64, the rest completion; a skewed draw: many short rows, some long ones), as real
  SFT data varies. Every row fits ``max_length`` (512), so neither framework truncates (their truncation
  rules differ: TRL cuts the end, rewardhub the prompt's start) and both train on identical token sequences:
  prompt + completion + EOS, right-padded per batch to its longest row, loss on the completion tokens only
  (rewardhub ``completion_only_loss=True``; TRL ``completion_only_loss=True`` on prompt/completion rows).
  rewardhub, as shipped, sends each batch through the model as groups of rows of similar length
  (``rewardhub.batching.length_groups``: the same loss and gradients, less padding);
  ``--with-nogroups`` adds ``rewardhub-nogroups``, one padded forward per batch as TRL does, so the table
  separates the grouping from the rest of the loop.
* training: batch 16 rows, one micro-batch per optimizer step, AdamW (fused, both frameworks' default) lr 1e-4
  constant, no warm-up, weight decay 0, max grad norm 1.0, fp32, gradient checkpointing off (TRL's default is
  on, and bf16 on: both are turned off), **no packing and no padding-free batches in either** (rewardhub has
  neither), dropout off, logging / evaluation / checkpointing off as far as each framework allows,
  ``--threads`` torch threads (default 2) in both.
* data order: the same in both. With seed 0 both shuffle with ``torch.randperm`` from a generator seeded
  ``0 + epoch`` (accelerate's seedable sampler under TRL's Trainer; rewardhub's ``DataOrder``), so every step
  trains on the same rows, with the same padding, in both (the table's tok/step and pad share show it).

Measurement: a step's time is the wall time between the end of the previous step (for the first step, the end
of setup: model, data and trainer built) and the end of this one (rewardhub: the ``callbacks`` of
``train_sft``; TRL: ``TrainerCallback.on_step_end``), so it covers data, collation, forward, backward, clipping
and the optimizer. The tokens a step trains on are counted the same way in both, from the tensors each
framework feeds its training forward: non-pad tokens (attention mask), padded slots (batch x width) and
loss tokens (labels != -100 after the shift). The first ``--warmup`` steps of each run are dropped. Since both
frameworks train on the same batches, step s of a rewardhub run and step s of the TRL run beside it do the same
work: the headline ratio is the median over those matched steps of their tokens/s ratio (with quartiles),
which a burst of load on a shared machine moves least; the pooled ratio (all measured tokens / all measured
time), each back-to-back run pair's ratio and the same median per CPU second of the process (with one
thread, blind to the time spent waiting for a core) are printed beside it. Peak RSS is the subprocess's ``VmHWM``
right after its last step (before the final save). ``--repeats N`` interleaves N runs per framework (TRL,
rewardhub, rewardhub, TRL, ...). ``--profile DIR`` cProfiles the measured steps of each framework's first run.

    python bench/bench_sft_vs_trl.py [--variant small|large|both|tiny] [--steps 23] [--warmup 3]
                                     [--repeats 3] [--threads 2] [--json out.json] [--profile DIR]

TRL is needed only for this benchmark (``pip install --no-deps trl`` keeps the installed torch/transformers).
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

FRAMEWORKS = ("trl", "rewardhub", "rewardhub-nogroups")
BATCH, LR, SEED, N_ROWS, MAX_LENGTH, POSITIONS = 16, 1e-4, 0, 2048, 512, 512
IGNORE = -100
def count_batch(clock: StepClock, mask, labels) -> None:
    """Add one training forward's tokens to the clock: non-pad tokens, padded slots, loss tokens."""
    clock.add(tokens=int(mask.sum()), padded=int(mask.numel()), loss_tokens=int((labels[:, 1:] != IGNORE).sum()))


# ------------------------------------------------------------------------------------------------------------
# Workers: one framework per process
# ------------------------------------------------------------------------------------------------------------

def run_rewardhub(model_dir: str, data_file: str, out_dir: str, steps: int, threads: int, clock: StepClock,
                  groups: bool = True) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from rewardhub import batching
    from rewardhub.config import SFTConfig
    from rewardhub.recipes import sft

    if not groups:
        batching.MAX_LENGTH_GROUPS = 1

    cfg = SFTConfig(
        model=model_dir, dtype="float32", gradient_checkpointing=False, data=data_file, out=out_dir, seed=SEED,
        lr=LR, lr_scheduler="constant", warmup_ratio=0.0, weight_decay=0.0, max_steps=steps, batch_size=BATCH,
        grad_accum=1, max_grad_norm=1.0, max_length=MAX_LENGTH, completion_only_loss=True, log_every=steps,
        eval_every=0, save_every=0, resume=False, threads=threads, report_to="none",
    )
    checks: dict[str, Any] = {}
    setup, loss = sft.SFT.setup, sft.summed_token_loss

    def timed_setup(self, accelerator):  # the clock starts when the model, data and optimizer are ready
        state = setup(self, accelerator)
        checks.update(gradient_checkpointing=bool(state.model.is_gradient_checkpointing),
                      dtype=str(state.model.dtype), threads=torch.get_num_threads(),
                      optimizer=type(state.optimizer).__name__,
                      fused=bool(state.optimizer.param_groups[0].get("fused")), rows=len(state.examples))
        clock.mark_ready()
        return state

    def counted_loss(model, ids, mask, labels):
        if torch.is_grad_enabled():  # training forwards only
            count_batch(clock, mask, labels)
        return loss(model, ids, mask, labels)

    sft.SFT.setup, sft.summed_token_loss = timed_setup, counted_loss
    sft.train_sft(cfg, callbacks=[lambda step, metrics: clock.step_end(loss=metrics["loss"])])
    return {"steps": clock.steps, "peak_rss_mib": clock.peak_rss_last_step, "peak_rss_end_mib": peak_rss_mib(),
            "setup_s": clock.setup_s, "checks": checks}


def run_trl(model_dir: str, data_file: str, out_dir: str, steps: int, threads: int, clock: StepClock
            ) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in Path(data_file).read_text().splitlines()]
    args = SFTConfig(
        output_dir=out_dir, seed=SEED, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        max_steps=steps, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, max_length=MAX_LENGTH,
        packing=False, padding_free=False, completion_only_loss=True,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, model_init_kwargs={"dtype": "float32"},
    )
    return train_trl(SFTTrainer, clock, lambda clock, inputs: count_batch(clock, inputs["attention_mask"],
                                                                       inputs["labels"]),
                     {}, model=model_dir, args=args, train_dataset=Dataset.from_list(rows),
                     processing_class=AutoTokenizer.from_pretrained(model_dir))


def run_rewardhub_nogroups(*a, **kw) -> dict[str, Any]:
    return run_rewardhub(*a, **kw, groups=False)


WORKERS = {"trl": run_trl, "rewardhub": run_rewardhub, "rewardhub-nogroups": run_rewardhub_nogroups}


# ------------------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------------------

def write_rows(path: Path, n_rows: int = N_ROWS) -> list[int]:
    """Prompt/completion rows whose prompt + completion + EOS spans 64-256 tokens; returns those lengths."""
    rng = random.Random(SEED)
    lengths = []
    with path.open("w") as f:
        for _ in range(n_rows):
            total = 64 + int(192 * rng.betavariate(1.5, 3.0))  # mean ~133, skewed towards short rows
            prompt = rng.randint(16, 64)
            completion = total - prompt - 1  # + EOS
            f.write(json.dumps({"prompt": random_text(rng, prompt) + "\n",
                                "completion": random_text(rng, completion - 1)}) + "\n")
            lengths.append(total)
    return lengths


def print_table(variant: str, n_params: int, frameworks, rows: dict[str, Any], lines: list[str], mean_len: float
                ) -> None:
    print_step_table(
        f"SFT {variant}: {n_params / 1e6:.2f}M parameters, batch {BATCH}, rows of 64-256 tokens (mean {mean_len:.0f})",
        frameworks, rows, lines, loss_tokens=True,
        legend="(tok/step = non-pad tokens fed to the training forward; pad share = padded slots that are padding; "
               "loss tok = tokens with a loss; tokens/s = pooled non-pad tokens / pooled step time; matched steps = "
               "step s of each run against step s of the run beside it; run pairs = pooled ratio of each "
               "back-to-back pair)")


def main() -> None:
    global BATCH
    ap = bench_parser(__doc__, FRAMEWORKS, steps=23, repeats=3)
    ap.add_argument("--variant", choices=["small", "large", "both", "tiny"], default="small")
    ap.add_argument("--batch-size", type=int, default=BATCH, help=f"rows per optimizer step (default {BATCH})")
    ap.add_argument("--with-nogroups", action="store_true",
                    help="also run rewardhub with one padded forward per batch (no length groups), as TRL does")
    args = ap.parse_args()
    BATCH = args.batch_size  # read by the workers and the table
    if args.worker:
        worker_main(args, WORKERS[args.worker], "bench_sft")
        return
    if not driver_ready(ap, args, "SFTTrainer"):
        return
    frameworks = FRAMEWORKS if args.with_nogroups else FRAMEWORKS[:2]
    comparisons = [("rewardhub", "trl", 1.2, ""), ("rewardhub-nogroups", "trl", None, "")]
    run_benchmark(__file__, args, "SFT", frameworks, write_rows, comparisons, print_table, POSITIONS, BATCH)


if __name__ == "__main__":
    main()
