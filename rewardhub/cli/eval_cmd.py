"""``rewardhub eval``: generate completions with a model, score them with a provider, report the result."""

from __future__ import annotations

from pathlib import Path

from rewardhub.cli.common import load_reward_config, print_reward_summary, write_jsonl
from rewardhub.config import EvalConfig, add_flags


def add_parser(sub):
    p = sub.add_parser("eval", help="generate with a model and score with a reward provider",
                       description="Generate a completion for each prompt (greedy by default), score it with a "
                       "reward provider, and print accuracy (for verifiers) and mean reward.")
    add_flags(p, EvalConfig)
    return p


def run(args) -> int:
    from rewardhub.data import load_rows, require_columns
    from rewardhub.evaluation import generate_completions, score_rows
    from rewardhub.models import check_context_length, load_model_and_tokenizer
    from rewardhub.out_dir import check_out_file
    from rewardhub.reward_resolution import build_reward

    cfg = load_reward_config(EvalConfig, args)
    check_out_file(cfg.output)
    # Before the data and the weights: a hub id that cannot be fetched, or more new tokens than the context holds.
    check_context_length(cfg.model, max_new_tokens=cfg.max_new_tokens)
    rows = load_rows(cfg.data, "test", cfg.data_args or None, cfg.column_map)
    if cfg.limit:
        rows = rows.select(range(min(cfg.limit, len(rows))))
    require_columns(rows, ["prompt"], "eval")
    provider = build_reward(cfg.reward, cfg.reward_args)
    try:
        model, tokenizer = load_model_and_tokenizer(cfg.model)
        prompts, completions = generate_completions(model, tokenizer, rows, cfg.max_new_tokens,
                                                    cfg.temperature, cfg.batch_size, cfg.seed)
        rewards = score_rows(provider, prompts, completions, rows)
    finally:
        provider.close()
    output = Path(cfg.output)
    write_jsonl(output, ({"prompt": p, "completion": c, "reward": r.value, "status": r.status.value,
                          "detail": r.detail} for p, c, r in zip(prompts, completions, rewards)))
    print_reward_summary(f"{provider.display_name}: {cfg.model} on {cfg.data}", provider, rewards, output)
    return 0
