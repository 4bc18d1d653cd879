"""``rewardhub eval``: generate completions with a model, score them with a provider, report the result."""

from __future__ import annotations

from pathlib import Path

from rewardhub.cli.common import console, print_summary, write_jsonl
from rewardhub.options import parse_key_values
from rewardhub.tiny_model import BUILTIN_TINY


def add_parser(sub):
    p = sub.add_parser("eval", help="generate with a model and score with a reward provider",
                       description="Generate a completion for each prompt (greedy by default), score it with a "
                       "reward provider, and print accuracy (for verifiers) and mean reward.")
    p.add_argument("--reward", required=True, help="provider name, weighted mix, or module:attr")
    p.add_argument("--reward-arg", action="append", default=[], metavar="KEY=VALUE", help="provider option")
    p.add_argument("--verifier", action="append", default=[], metavar="FILE",
                   help="python file whose @rewardhub.verifier functions to register (repeatable)")
    p.add_argument("--model", default=BUILTIN_TINY, help=f"model path or id (default: {BUILTIN_TINY})")
    p.add_argument("--data", default="arithmetic:test", help="prompts: task, file, directory or hub id "
                   "(default: arithmetic:test)")
    p.add_argument("--data-arg", action="append", default=[], metavar="KEY=VALUE", help="task option")
    p.add_argument("--column-map", action="append", default=[], metavar="SRC=DST", help="rename columns")
    p.add_argument("--limit", type=int, default=200, help="evaluate the first N rows (0: all; default 200)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per prompt (default 32)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 for greedy (default)")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per generation batch (default 64)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--output", type=Path, default=None, help="per-row results (default: eval.jsonl)")
    return p


def run(args) -> int:
    from rewardhub.data import load_rows, require_columns
    from rewardhub.evaluation import generate_completions, score_rows
    from rewardhub.models import load_model_and_tokenizer
    from rewardhub.plugins import register_verifier_file
    from rewardhub.reward_resolution import build_reward, check_reward_spec, summarize

    for file in args.verifier:
        register_verifier_file(file)
    check_reward_spec(args.reward)
    rows = load_rows(args.data, "test", parse_key_values(args.data_arg, "--data-arg") or None,
                     parse_key_values(args.column_map, "--column-map"))
    if args.limit:
        rows = rows.select(range(min(args.limit, len(rows))))
    require_columns(rows, ["prompt"], "eval")
    provider = build_reward(args.reward, parse_key_values(args.reward_arg, "--reward-arg"))
    try:
        model, tokenizer = load_model_and_tokenizer(args.model)
        prompts, completions = generate_completions(model, tokenizer, rows, args.max_new_tokens,
                                                    args.temperature, args.batch_size, args.seed)
        rewards = score_rows(provider, prompts, completions, rows)
    finally:
        provider.close()
    output = args.output or Path("eval.jsonl")
    write_jsonl(output, ({"prompt": p, "completion": c, "reward": r.value, "status": r.status.value,
                          "detail": r.detail} for p, c, r in zip(prompts, completions, rewards)))
    stats = summarize(rewards)
    if provider.reports_correctness:
        stats["accuracy"] = stats.get("frac_ok", 0.0)
    print_summary(f"{provider.display_name}: {args.model} on {args.data}", stats)
    console.print(f"per-row results: {output}")
    return 0
