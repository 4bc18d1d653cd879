"""The ReFT warm-up: a short SFT stage on the same data before RL, so the policy starts out able to answer.

ReFT (Luong et al., 2024) warms up with SFT and then runs PPO against a programmatic reward; a policy that
never produces a correct answer gets no learning signal from a verifier. Running both stages under one
command keeps one output directory: ``OUT/sft-warmup`` (a complete SFT run, resumable) and the RL run in
``OUT``.
"""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path

from rewardhub.config import DataArgs, ModelArgs, RewardArgs, RLConfig, SFTConfig
from rewardhub.errors import ConfigError
from rewardhub.rewards import RewardProvider

#: columns that give SFT something to imitate (rewardhub.data's prompt/completion, conversational and text formats)
DEMONSTRATION_COLUMNS = ("completion", "messages", "text")
#: the warm-up trains all parameters; --lora-r applies to the RL stage
LORA_FIELDS = {"lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "merge_lora"}


def check_warmup_data(cfg: RLConfig) -> None:
    """Refuse a warm-up on data without demonstrations, before any model loads, with what to do instead."""
    from rewardhub.data import load_rows

    rows = load_rows(cfg.data, "train", cfg.data_args, cfg.column_map)
    if not any(c in rows.column_names for c in DEMONSTRATION_COLUMNS):
        raise ConfigError(
            f"--sft-warmup-steps {cfg.sft_warmup_steps} runs SFT on --data {cfg.data!r} before RL, but its rows have "
            f"no completions to imitate (columns: {', '.join(rows.column_names)}; SFT needs one of "
            f"{', '.join(DEMONSTRATION_COLUMNS)}). Pass --sft-warmup-steps 0 and a --model that was already "
            "fine-tuned (e.g. the output of `rewardhub sft`), or data with completions")


def sft_warmup(cfg: RLConfig, provider: RewardProvider | None = None) -> str:
    """Run (or resume, or reuse) the warm-up SFT for ``cfg`` and return the warmed-up model's path.

    The warm-up uses ``SFTConfig``'s optimiser defaults and trains all parameters (``--lora-r`` applies to
    the RL stage); for anything beyond a quick start, run ``rewardhub sft`` yourself and pass its model.
    Its held-out evaluation scores with ``provider`` (the RL reward), so both stages report on one scale.
    """
    check_warmup_data(cfg)
    out = Path(cfg.out) / "sft-warmup"
    model = out / "model"
    if (model / "config.json").exists() and (out / "checkpoints" / f"step-{cfg.sft_warmup_steps}").exists():
        return str(model)  # finished earlier: a rerun of the same command resumes RL, not SFT
    from rewardhub.recipes.sft import train_sft

    # The model, data and reward fields carry over; the optimiser fields keep SFTConfig's defaults.
    carried = {f.name for group in (ModelArgs, DataArgs, RewardArgs) for f in fields(group)} - LORA_FIELDS
    sft_cfg = SFTConfig(
        **{name: copy.deepcopy(getattr(cfg, name)) for name in sorted(carried)},
        out=str(out), seed=cfg.seed, resume=cfg.resume, force_resume=cfg.force_resume, report_to=cfg.report_to,
        threads=cfg.threads,
        max_steps=cfg.sft_warmup_steps, eval_every=0, save_every=max(cfg.sft_warmup_steps // 4, 1),
        log_every=max(cfg.sft_warmup_steps // 10, 1), eval_max_new_tokens=cfg.max_new_tokens,
    )
    train_sft(sft_cfg, provider=provider)
    return str(model)
