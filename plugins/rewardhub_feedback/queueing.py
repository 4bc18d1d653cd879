"""What ``rewardhub feedback queue`` puts in the labelling queue: items read from a file, or sampled from a model.

Both return ``(items, skipped)``: items as :meth:`FeedbackStore.enqueue_items` takes them (``prompt``,
``completions`` with one reply to rate or two to compare, ``required``, ``metadata``, ``where`` for messages),
and how many prompts or rows gave nothing to label. The store validates every item before it writes any.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rewardhub.errors import ConfigError, DataError

COMPLETION_KEYS = ("completions", "completion", "completion_a", "completion_b")
OWN_KEYS = ("prompt", *COMPLETION_KEYS, "required", "source", "metadata")


def _completions(row: Mapping[str, Any], where: str) -> list[Any]:
    if row.get("completions") is not None:
        value = row["completions"]
        if not isinstance(value, list):
            raise DataError(f"{where}: `completions` must be a list of one completion (to rate) or two (to "
                            f"compare), got {type(value).__name__}")
        return value
    if row.get("completion") is not None:
        return [row["completion"]]
    if row.get("completion_a") is not None or row.get("completion_b") is not None:
        return [row.get("completion_a"), row.get("completion_b")]
    raise DataError(f"{where}: no completion to label; give `completions` (a list of one or two), `completion`, or "
                    f"`completion_a` and `completion_b` (the row has {', '.join(sorted(row))})")


def items_from_rows(rows: Iterable[Mapping[str, Any]], name: str, limit: int = 0,
                    required: int = 1) -> tuple[list[dict[str, Any]], int]:
    """Queue items from data rows (columns other than the known ones are kept as the item's metadata)."""
    items, problems = [], []
    for i, row in enumerate(rows):
        if limit and len(items) >= limit:
            break
        where = f"{name} row {i}"
        try:
            if not isinstance(row, Mapping):
                raise DataError(f"{where}: expected an object with a prompt and its completion(s)")
            completions = _completions(row, where)
        except DataError as exc:
            problems.append(str(exc))
            continue
        extra = {k: v for k, v in row.items() if k not in OWN_KEYS and v is not None}
        meta = row.get("metadata")
        merged = {**extra, **meta} if isinstance(meta, Mapping) else (meta if meta is not None else extra)
        items.append({"prompt": row.get("prompt"), "completions": completions, "where": where,
                      "required": row.get("required") if row.get("required") is not None else required,
                      "metadata": merged or None, **({"source": row["source"]} if row.get("source") else {})})
    if problems:
        from .store import _raise_problems

        _raise_problems(problems, "bad row(s)", "queued")
    if not items:
        raise DataError(f"{name} has no rows to queue")
    return items, 0


def items_from_model(cfg) -> tuple[list[dict[str, Any]], int]:
    """Sample ``cfg.num_generations`` completions per prompt of ``cfg.data`` with rewardhub's generation code.

    Prompts are rendered as the policy sees them (a message list through the chat template), which is also
    what a ``--reward=human`` training run later looks up. Two identical samples (or an empty one, for a
    comparison) cannot be compared and are skipped and counted.
    """
    import torch

    from rewardhub.data import load_rows, render_prompt, require_columns
    from rewardhub.generation import SamplingParams, generate_text
    from rewardhub.models import load_model, load_tokenizer

    g = cfg.num_generations
    if g not in (1, 2):
        raise ConfigError(f"feedback queue: --num-generations must be 1 (a completion to rate) or 2 (a pair to "
                          f"compare), got {g}")
    if g == 2 and not cfg.temperature > 0:
        raise ConfigError("feedback queue: --num-generations 2 needs --temperature > 0 (greedy decoding gives the "
                          "same completion twice)")
    rows = load_rows(cfg.data, cfg.split, cfg.data_args or None)
    require_columns(rows, ["prompt"], "feedback queue --model")
    raw = list(rows["prompt"])[: cfg.limit or None]
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, dtype=cfg.dtype, tokenizer=tokenizer)
    model.eval()
    prompts = [render_prompt(p, tokenizer) for p in raw]
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(cfg.seed)
    with torch.no_grad():
        texts = generate_text(model, tokenizer, [p for p in prompts for _ in range(g)], params,
                              batch_size=cfg.batch_size * g, generator=generator)
    meta = {"model": cfg.model, "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed,
            "max_new_tokens": cfg.max_new_tokens}
    items, skipped = [], 0
    for i, prompt in enumerate(prompts):
        completions = texts[i * g:(i + 1) * g]
        if g == 2 and (completions[0] == completions[1] or not all(c.strip() for c in completions)):
            skipped += 1
            continue
        items.append({"prompt": prompt, "completions": completions, "required": cfg.labels, "metadata": meta,
                      "where": f"{cfg.data} prompt {i}"})
    return items, skipped
