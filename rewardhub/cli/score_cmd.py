"""``rewardhub score``: score the existing ``completion`` column of a dataset with any provider (no model)."""

from __future__ import annotations

from pathlib import Path

from rewardhub.cli.common import console, print_summary, write_jsonl
from rewardhub.options import parse_key_values


def add_parser(sub):
    p = sub.add_parser("score", help="score a dataset's completion column with a reward provider",
                       description="Score each row's `completion` (with its `prompt` if present) using a reward "
                       "provider; write every row's reward, status and detail to a JSONL file and print a summary.")
    p.add_argument("--reward", required=True, help="provider name, weighted mix, or module:attr")
    p.add_argument("--reward-arg", action="append", default=[], metavar="KEY=VALUE", help="provider option")
    p.add_argument("--verifier", action="append", default=[], metavar="FILE",
                   help="python file whose @rewardhub.verifier functions to register (repeatable)")
    p.add_argument("--data", required=True, help="file, directory, task or hub id with a `completion` column")
    p.add_argument("--split", default="train", help="split to score when the data has several (default: train)")
    p.add_argument("--column-map", action="append", default=[], metavar="SRC=DST", help="rename columns")
    p.add_argument("--batch-size", type=int, default=256, help="samples per provider call (default: 256)")
    p.add_argument("--output", type=Path, default=None,
                   help="where to write per-row results (default: scores.jsonl in the current directory)")
    return p


def run(args) -> int:
    from rewardhub.data import load_rows, require_columns
    from rewardhub.plugins import register_verifier_file
    from rewardhub.reward_resolution import build_reward, check_reward_spec, summarize
    from rewardhub.rewards import Sample

    for file in args.verifier:
        register_verifier_file(file)
    check_reward_spec(args.reward)
    rows = load_rows(args.data, args.split, None, parse_key_values(args.column_map, "--column-map"))
    require_columns(rows, ["completion"], "score")
    provider = build_reward(args.reward, parse_key_values(args.reward_arg, "--reward-arg"))
    rewards = []
    try:
        for start in range(0, len(rows), args.batch_size):
            batch = rows.select(range(start, min(start + args.batch_size, len(rows))))
            samples = [Sample(str(r.get("prompt") or ""), str(r["completion"]), r) for r in batch]
            rewards.extend(provider(samples))
    finally:
        provider.close()
    output = args.output or Path("scores.jsonl")
    write_jsonl(output, ({"index": i, "reward": r.value, "status": r.status.value, "detail": r.detail,
                          **({"parts": dict(r.parts)} if r.parts else {})} for i, r in enumerate(rewards)))
    stats = summarize(rewards)
    if provider.reports_correctness:
        stats["accuracy"] = stats.get("frac_ok", 0.0)
    print_summary(f"{provider.display_name} on {args.data}", stats)
    console.print(f"per-row results: {output}")
    return 0
