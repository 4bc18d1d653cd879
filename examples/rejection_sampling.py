"""A recipe of your own in one file: online rejection-sampling fine-tuning (RFT) driven by rewardhub's loop.

Each step samples ``--samples`` completions per prompt from the current policy, keeps the ones the verifier
scores correct, and takes one SFT step on them (RFT, Yuan et al. 2023, the baseline ReFT is compared with).
The recipe is four methods (``setup``, ``step``, ``evaluate``, ``finish``, the :class:`rewardhub.loop.Recipe`
protocol); :func:`rewardhub.loop.run` adds logging, held-out evaluation before and after, checkpoints, resume
and ``--max-time``, exactly as for the built-in recipes.

    python examples/rejection_sampling.py                       # warm-up SFT, then 40 RFT steps
    python examples/rejection_sampling.py --warmup-steps 20 --steps 3 --eval-size 8   # a smoke run
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rewardhub.config import SFTConfig
from rewardhub.data import load_rows, render_prompt
from rewardhub.engine import DataOrder, clip_and_step, make_optimizer, save_final_model
from rewardhub.evaluation import load_eval_rows, score_greedy
from rewardhub.generation import SamplingParams, generate_text
from rewardhub.loop import Outcome, run
from rewardhub.models import load_model, load_tokenizer
from rewardhub.recipes.sft import IGNORE, collate, summed_token_loss, tokenize_sft, train_sft
from rewardhub.reward_resolution import build_reward
from rewardhub.rewards import Sample, Status


@dataclass
class RFTState:
    accelerator: Any
    tokenizer: Any
    model: Any
    optimizer: Any
    scheduler: Any
    prompts: Any
    eval_rows: Any
    order: DataOrder


class RejectionSampling:
    label = "rft"
    eval_before = True

    def __init__(self, cfg: SFTConfig, provider, samples: int):
        self.cfg, self.provider, self.samples = cfg, provider, samples

    def setup(self, accelerator) -> RFTState:
        cfg = self.cfg
        tokenizer = load_tokenizer(cfg.model)
        model = load_model(cfg.model, tokenizer=tokenizer)
        prompts = load_rows(cfg.data, "train", cfg.data_args)
        eval_rows = load_eval_rows(cfg.data, cfg.eval_data, cfg.data_args, cfg.column_map, cfg.eval_size)
        optimizer, scheduler = make_optimizer(model, cfg, accelerator.num_processes)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        return RFTState(accelerator, tokenizer, model, optimizer, scheduler, prompts, eval_rows,
                        DataOrder(len(prompts), cfg.seed))

    def step(self, state: RFTState, step: int) -> dict[str, float]:
        cfg, tok = self.cfg, state.tokenizer
        rows = [dict(state.prompts[i]) for i in state.order.batch(step - 1, cfg.batch_size)]
        texts = [render_prompt(r["prompt"], tok) for r in rows for _ in range(self.samples)]
        policy = state.accelerator.unwrap_model(state.model)
        policy.eval()
        sampled = generate_text(policy, tok, texts, SamplingParams(cfg.eval_max_new_tokens, temperature=1.0),
                                generator=torch.Generator().manual_seed(cfg.seed * 10_007 + step))
        policy.train()
        rewards = self.provider([Sample(t, c, rows[i // self.samples])
                                 for i, (t, c) in enumerate(zip(texts, sampled))])
        kept = [{"prompt": t, "completion": c}
                for t, c, r in zip(texts, sampled, rewards) if r.status is Status.OK]
        loss = 0.0
        if kept:  # one SFT step on the accepted samples, token-mean loss
            ids, mask, labels = (x.to(state.accelerator.device)
                                 for x in collate(tokenize_sft(kept, tok, cfg.max_length), tok.pad_token_id))
            summed, n_tokens = summed_token_loss(state.model, ids, mask, labels)
            state.accelerator.backward(summed / max(n_tokens, 1))
            loss = float(summed.detach()) / max(n_tokens, 1)
        clip_and_step(state.accelerator, state.model, state.optimizer, cfg.max_grad_norm, state.scheduler,
                      apply=bool(kept))
        return {"accepted": len(kept) / len(texts), "loss": loss,
                "tokens": int((labels[:, 1:] != IGNORE).sum()) if kept else 0}

    def evaluate(self, state: RFTState) -> dict[str, float] | None:
        if state.eval_rows is None:
            return None
        return score_greedy(state.accelerator.unwrap_model(state.model), state.tokenizer, state.eval_rows,
                            self.provider, self.cfg.eval_max_new_tokens, batch_size=64)

    def finish(self, state: RFTState, outcome: Outcome) -> dict[str, Any]:
        path = save_final_model(state.accelerator, state.model, state.tokenizer, self.cfg.out)
        return {"before": outcome.before, "after": outcome.after, "steps": outcome.steps, "model_path": str(path)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/rejection-sampling")
    p.add_argument("--warmup-steps", type=int, default=600, help="SFT steps on the CoT demonstrations first")
    p.add_argument("--steps", type=int, default=40, help="rejection-sampling steps")
    p.add_argument("--samples", type=int, default=4, help="completions sampled per prompt")
    p.add_argument("--eval-size", type=int, default=200)
    args = p.parse_args()
    out = Path(args.out)
    common = dict(data="arithmetic-cot", data_args={"teacher_error": 0.6}, eval_size=args.eval_size,
                  eval_max_new_tokens=32, eval_every=0, threads=2)
    train_sft(SFTConfig(**common, out=str(out / "warmup"), max_steps=args.warmup_steps, batch_size=128, lr=1e-3,
                        save_every=0, log_every=max(args.warmup_steps // 5, 1)))
    provider = build_reward("verifier")
    try:
        cfg = SFTConfig(**common, model=str(out / "warmup" / "model"), out=str(out / "rft"), max_steps=args.steps,
                        batch_size=32, lr=1e-4, warmup_ratio=0.0, save_every=0, log_every=max(args.steps // 5, 1))
        final = run(RejectionSampling(cfg, provider, args.samples), cfg)
    finally:
        provider.close()
    before, after = final["before"]["accuracy"], final["after"]["accuracy"]
    print(f"held-out accuracy on {int(final['after']['n'])} problems: {before:.1%} before RFT -> {after:.1%} after "
          f"({100 * (after - before):+.1f} points, {final['steps']} steps)")


if __name__ == "__main__":
    main()
