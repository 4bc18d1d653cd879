"""GRPO against a reward written as a plain Python function, on the built-in tiny model.

The reward counts the 7s in a completion; within a few dozen steps the policy learns to write them.
Run: python examples/grpo_custom_reward.py [--steps 40] [--out runs/grpo-sevens]
"""

import argparse

import rewardhub


def sevens(completion: str, row: dict) -> float:
    return float(completion.count("7"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default="runs/grpo-sevens")
    args = parser.parse_args()
    # overwrite=True: each run of the example starts over in --out (a rerun would otherwise resume it)
    result = rewardhub.train(algo="grpo", reward=sevens, model="builtin:tiny-llama", data="arithmetic",
                             max_steps=args.steps, sft_warmup_steps=0, batch_size=4, num_generations=4,
                             max_new_tokens=8, lr=3e-3, lr_scheduler="constant", warmup_ratio=0.0, log_every=5,
                             eval_size=32, save_every=0, out=args.out, overwrite=True)
    final = result.metrics
    print(f"held-out reward: {final['before/reward_mean']:.2f} before, {final['after/reward_mean']:.2f} after")


if __name__ == "__main__":
    main()
