"""``rewardhub score``: score the existing ``completion`` column of a dataset with any provider (no model)."""

from __future__ import annotations

from pathlib import Path

from rewardhub.cli.common import load_reward_config, print_reward_summary, write_jsonl
from rewardhub.config import ScoreConfig, add_flags


def add_parser(sub):
    p = sub.add_parser("score", help="score a dataset's completion column with a reward provider",
                       description="Score each row's `completion` (with its `prompt` if present) using a reward "
                       "provider; write every row's reward, status and detail to a JSONL file and print a summary.")
    add_flags(p, ScoreConfig)
    return p


def run(args) -> int:
    from rewardhub.data import load_rows, require_columns
    from rewardhub.reward_resolution import build_reward
    from rewardhub.rewards import Sample

    cfg = load_reward_config(ScoreConfig, args)
    rows = load_rows(cfg.data, cfg.split, None, cfg.column_map)
    require_columns(rows, ["completion"], "score")
    provider = build_reward(cfg.reward, cfg.reward_args)
    rewards = []
    try:
        for start in range(0, len(rows), cfg.batch_size):
            batch = rows.select(range(start, min(start + cfg.batch_size, len(rows))))
            samples = [Sample(str(r.get("prompt") or ""), str(r["completion"]), r) for r in batch]
            rewards.extend(provider(samples))
    finally:
        provider.close()
    output = Path(cfg.output)
    write_jsonl(output, ({"index": i, "reward": r.value, "status": r.status.value, "detail": r.detail,
                          **({"parts": dict(r.parts)} if r.parts else {})} for i, r in enumerate(rewards)))
    print_reward_summary(f"{provider.display_name} on {cfg.data}", provider, rewards, output)
    return 0
