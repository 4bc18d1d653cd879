"""Train a short GRPO run, then write its report: one PNG per topic and a self-contained HTML page.

The reward has two components (the 7s in a completion, and a small bonus for brevity), so the reward plot
shows both beside their sum; a completion without a 7 is scored ``wrong``, so the status plot shows the share
of ``ok`` rising as the policy learns to write 7s. `rewardhub report RUN_DIR` does the same for any run
(sft, train, train-rm) from the command line.

Run: python examples/report_of_a_run.py [--steps 40] [--out runs/report-example]
then open runs/report-example/report/report.html in a browser.
"""

import argparse

from rewardhub.config import RLConfig
from rewardhub.recipes.rl import train_rl
from rewardhub.report import write_report
from rewardhub.reward_resolution import FunctionReward
from rewardhub.rewards import Reward, Status


def sevens_and_brevity(completion: str, row: dict) -> Reward:
    sevens = float(completion.count("7"))
    brevity = 1.0 / (1 + len(completion))
    return Reward(sevens + brevity, Status.OK if sevens else Status.WRONG,
                  parts={"sevens": sevens, "brevity": brevity})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default="runs/report-example")
    args = parser.parse_args()
    cfg = RLConfig(algo="grpo", reward="sevens", model="builtin:tiny-llama", data="arithmetic", max_steps=args.steps,
                   batch_size=4, num_generations=4, max_new_tokens=8, lr=3e-3, lr_scheduler="constant",
                   warmup_ratio=0.0, log_every=2, eval_every=max(args.steps // 4, 1), eval_size=32, save_every=0,
                   completions_every=max(args.steps // 4, 1), out=args.out, overwrite=True)
    train_rl(cfg, provider=FunctionReward(sevens_and_brevity))
    report = write_report(args.out)
    print(f"plots: {', '.join(p.name for p in report.plots)}")
    print(f"report: {report.html}")


if __name__ == "__main__":
    main()
