"""GRPO whose rollouts are sampled on an inference server, with the weights sent to it after every update.

    python examples/grpo_on_a_server.py                    # starts `rewardhub serve` here, full-weight sync
    python examples/grpo_on_a_server.py --lora             # LoRA policy: each step's adapter goes to the server
    python examples/grpo_on_a_server.py --server http://gpu-box:8000/v1 --model-name M --lora --model M  # vLLM

Without ``--server`` the script starts ``rewardhub serve`` on 127.0.0.1 (a free port) in a subprocess, on
the same model it trains, and passes its URL as ``generation_server``. The reward counts the 7s in a
completion (the built-in tiny model learns it within a few dozen steps). ``recompute_logprobs`` makes the
trainer recompute every rollout's log-probs, so ``generation/logprob_abs_diff_max`` shows, step by step,
that the server sampled from the trainer's current weights; at the end the server's greedy completions are
compared with the trained model's own.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path

import rewardhub
from rewardhub.generation import SamplingParams, TorchBackend
from rewardhub.generation_server import ServerBackend
from rewardhub.models import load_model, load_tokenizer
from rewardhub_judge.subprocess_server import served


def sevens(completion: str, row: dict) -> float:
    return float(completion.count("7"))


def compare(url: str, served_name: str | None, trained: Path) -> tuple[bool, float]:
    """Whether the server's greedy completions equal the trained model's, and the largest log-prob gap."""
    tok = load_tokenizer(str(trained))
    model = load_model(str(trained), tokenizer=tok)
    prompts = [tok(p)["input_ids"] for p in ("12+34=", "7+7=", "40+2=", "99+1=")]
    kw = dict(eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    remote = ServerBackend(url, model=served_name).generate(model, prompts, SamplingParams(12, 0.0), **kw)
    local = TorchBackend().generate(model, prompts, SamplingParams(12, 0.0), **kw)
    same = bool((remote.completion_ids == local.completion_ids).all())
    return same, float((remote.logprobs - local.logprobs).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", help="an OpenAI-compatible server's URL (default: start rewardhub serve here)")
    parser.add_argument("--model-name", help="the model's name on --server (default: the first it lists)")
    parser.add_argument("--model", default="builtin:tiny-llama", help="the policy (and, served here, the server's)")
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter and sync adapters, not weights")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="runs/grpo-on-a-server")
    args = parser.parse_args()
    out = Path(args.out)
    # without --server: `rewardhub serve` on 127.0.0.1 (a free port), on the model it trains
    server = nullcontext(args.server) if args.server else served(args.model, out.parent / (out.name + "-serve.log"))
    with server as url:
        lora = {"lora_r": 8, "lora_alpha": 16} if args.lora else {}
        result = rewardhub.train(algo="grpo", reward=sevens, model=args.model, data="arithmetic",
                                 generation_server=url, generation_model=args.model_name, recompute_logprobs=True,
                                 max_steps=args.steps, sft_warmup_steps=0, batch_size=4, num_generations=4,
                                 max_new_tokens=8, lr=3e-3, lr_scheduler="constant", warmup_ratio=0.0, log_every=5,
                                 eval_size=32, save_every=0, out=str(out), overwrite=True, **lora)
        rows = result.history()
        gap = max(r["generation/logprob_abs_diff_max"] for r in rows)
        gen = sum(r["time/generation"] for r in rows) / len(rows)
        sync = sum(r["time/weight_sync"] for r in rows) / len(rows)
        final = result.metrics
        print(f"held-out reward: {final['before/reward_mean']:.2f} before, {final['after/reward_mean']:.2f} after")
        print(f"server vs trainer log-probs, largest gap over {len(rows)} steps: {gap:.2e}")
        print(f"per step: {gen:.3f} s sampling on the server, {sync:.3f} s sending weights")
        served_name = f"rewardhub-lora-v{args.steps}" if args.lora else args.model_name
        same, last_gap = compare(url, served_name, result.model_path)
        print(f"after training, greedy completions {'match' if same else 'DIFFER'} (largest log-prob gap "
              f"{last_gap:.2e})")
        if not same or gap > 1e-3:
            raise SystemExit("the server did not sample from the trainer's weights")


if __name__ == "__main__":
    main()
