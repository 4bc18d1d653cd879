"""The Python API with in-memory objects: a loaded model, a list of rows, a plain reward function.

SFT on rows built in Python, then GRPO from that model against a function, then an evaluation of the result;
every step returns a ``rewardhub.Result`` (final metrics, the run directory, the model's path).
Run: python examples/python_api.py [--out runs/python-api] [--sft-steps 100] [--rl-steps 40]
"""

import argparse
import random
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

import rewardhub
from rewardhub.models import resolve_model_path


def addition_rows() -> tuple[list[dict], list[dict]]:
    """Every sum of two digits: 80 to train on, 20 held out (never trained on)."""
    rows = [{"prompt": f"{a}+{b}=", "completion": str(a + b), "answer": str(a + b)}
            for a in range(10) for b in range(10)]
    random.Random(0).shuffle(rows)
    return rows[:80], rows[80:]


def exact(completion: str, row: dict) -> bool:
    return completion.strip() == row["answer"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/python-api")
    parser.add_argument("--sft-steps", type=int, default=100)
    parser.add_argument("--rl-steps", type=int, default=40)
    args = parser.parse_args()
    out = Path(args.out)
    path = resolve_model_path("builtin:tiny-llama")  # any transformers model and tokenizer will do
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    train_rows, held_out = addition_rows()

    sft = rewardhub.sft(model=model, tokenizer=tokenizer, data=train_rows, eval_data=held_out, reward=exact,
                        out=str(out / "sft"), max_steps=args.sft_steps, batch_size=32, lr=3e-3, log_every=50,
                        eval_size=len(held_out), eval_max_new_tokens=4, overwrite=True)
    print(f"after SFT: held-out exact answers {sft.metrics['reward_mean']:.0%} ({sft.model_path})")
    grpo = rewardhub.train(algo="grpo", reward=exact, model=str(sft.model_path), data=train_rows, eval_data=held_out,
                           out=str(out / "grpo"), max_steps=args.rl_steps, sft_warmup_steps=0, batch_size=8,
                           num_generations=4, max_new_tokens=4, lr=1e-3, log_every=5, eval_size=len(held_out),
                           overwrite=True)
    print(f"after GRPO: held-out exact answers {grpo.metrics['before/reward_mean']:.0%} -> "
          f"{grpo.metrics['after/reward_mean']:.0%}")
    scores = rewardhub.evaluate(model=str(grpo.model_path), data=held_out, reward="exact-match", max_new_tokens=4)
    print(f"evaluate: mean exact-match {scores.metrics['mean']:.2f} on {len(scores.rows)} prompts; first row: "
          f"{scores.rows[0]}")


if __name__ == "__main__":
    main()
