"""RLAIF: GRPO with rewards from an LLM judge behind an OpenAI-compatible API (``--reward=judge``).

    python examples/rlaif_judge.py                                   # offline plumbing demo (under a minute)
    python examples/rlaif_judge.py --judge-path ./my-instruct-model  # serve your own local judge
    python examples/rlaif_judge.py --base-url http://host:8000/v1 --judge-model NAME   # an existing endpoint

Without ``--base-url`` the script starts ``rewardhub serve`` on a local model in a subprocess and points
the judge reward at it. The default judge is the built-in tiny RANDOM model, so the run shows the plumbing
(requests, statuses, masking, metrics), not learning: a random model cannot write "SCORE: n", so every
judgement is status ``error`` and masked out of the update. The run therefore uses ``--max-failure-rate 1``;
with the default 0.5 the loop would stop at step 1 with "reward provider 'judge' failed on 16 of 16
samples", which is the right behaviour for a broken judge in a real run. Give an instruction-tuned judge
(``--judge-path`` or ``--base-url``) for meaningful rewards; the failure rate limit then stays at its default.
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from pathlib import Path

from rewardhub.cli.main import main as rewardhub
from rewardhub.tiny_model import build_tiny_model
from rewardhub_judge.subprocess_server import served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="an OpenAI-compatible judge endpoint; default: serve --judge-path locally")
    parser.add_argument("--judge-model", help="the judge model's name at --base-url (default: the only one listed)")
    parser.add_argument("--judge-path", help="local model to serve as the judge (default: a tiny random model)")
    parser.add_argument("--policy", default="builtin:tiny-llama", help="the policy to train")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default="runs/rlaif-judge")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    random_judge = args.base_url is None and args.judge_path is None
    if args.base_url:
        server = nullcontext(args.base_url)
    else:
        judge_path = str(build_tiny_model(out / "tiny-judge")) if random_judge else args.judge_path
        server = served(judge_path, out / "judge-server.log", served_name="judge")
    with server as url:
        code = train_against(url, args, out, random_judge)
    if code:
        raise SystemExit(code)
    report(out / "train", random_judge)


def train_against(url: str, args, out: Path, random_judge: bool) -> int:
    """``rewardhub train --reward judge`` against the judge at ``url``; the CLI's exit code."""
    print(f"judge at {url}")
    reward_args = [f"base_url={url}", f"max_tokens={16 if random_judge else 512}", "concurrency=8"]
    if args.judge_model:
        reward_args.append(f"model={args.judge_model}")
    flags = ["train", "--algo", "grpo", "--reward", "judge", "--model", args.policy, "--data", "arithmetic",
             "--max-steps", str(args.steps), "--batch-size", "4", "--num-generations", "4", "--max-new-tokens", "8",
             "--sft-warmup-steps", "0", "--eval-size", "8", "--eval-every", "0", "--save-every", "0",
             "--completions-every", "1", "--log-every", "1", "--threads", "1", "--out", str(out / "train"),
             "--no-resume"]
    for reward_arg in reward_args:
        flags += ["--reward-arg", reward_arg]
    if random_judge:
        flags += ["--max-failure-rate", "1.0"]  # every judgement of a random judge fails (see the docstring)
    return rewardhub(flags)


def report(run: Path, random_judge: bool) -> None:
    """What the judge did: statuses, requests, latency, and one judged completion with its detail."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["kind"] == "train"][-1]
    keys = ("reward/mean", "reward/frac_ok", "reward/frac_error", "reward/frac_timeout", "provider/judge/requests",
            "provider/judge/cache_hits", "provider/judge/parse_failures", "provider/judge/latency_mean_s")
    print("last step: " + ", ".join(f"{k}={last[k]:.3g}" for k in keys if k in last))
    example = json.loads(sorted((run / "completions").glob("step_*.jsonl"))[-1].read_text().splitlines()[0])
    print(f"a judged completion: {example['completion']!r} -> {example['status']} {example['reward']:.3g} "
          f"({example['detail'][:160]})")
    if random_judge:
        print("The judge was a random tiny model: no judgement was parseable, so every sample was masked (status "
              "error) and the policy did not learn. For real RLAIF, serve an instruction-tuned model "
              "(--judge-path, or `rewardhub serve --model M`) or use an endpoint (--base-url, --judge-model).")


if __name__ == "__main__":
    main()
