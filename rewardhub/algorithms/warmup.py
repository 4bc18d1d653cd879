"""The ReFT warm-up: a short SFT stage on the same data before RL, so the policy starts out able to answer.

ReFT (Luong et al., 2024) warms up with SFT and then runs PPO against a programmatic reward; a policy that
never produces a correct answer gets no learning signal from a verifier. Running both stages under one
command keeps one output directory: ``OUT/sft-warmup`` (a complete SFT run, resumable) and the RL run in
``OUT``.
"""

from __future__ import annotations

from pathlib import Path

from rewardhub.config import RLConfig, SFTConfig


def sft_warmup(cfg: RLConfig) -> str:
    """Run (or resume, or reuse) the warm-up SFT for ``cfg`` and return the warmed-up model's path.

    The warm-up uses ``SFTConfig``'s optimiser defaults and trains all parameters (``--lora-r`` applies to
    the RL stage); for anything beyond a quick start, run ``rewardhub sft`` yourself and pass its model.
    """
    out = Path(cfg.out) / "sft-warmup"
    model = out / "model"
    if (model / "config.json").exists() and (out / "checkpoints" / f"step-{cfg.sft_warmup_steps}").exists():
        return str(model)  # finished earlier: a rerun of the same command resumes RL, not SFT
    from rewardhub.algorithms.sft import train_sft

    sft_cfg = SFTConfig(
        model=cfg.model, dtype=cfg.dtype, gradient_checkpointing=cfg.gradient_checkpointing,
        data=cfg.data, eval_data=cfg.eval_data, data_args=dict(cfg.data_args), column_map=dict(cfg.column_map),
        max_length=cfg.max_length, eval_size=cfg.eval_size, out=str(out), seed=cfg.seed,
        max_steps=cfg.sft_warmup_steps, eval_every=0, save_every=max(cfg.sft_warmup_steps // 4, 1),
        log_every=max(cfg.sft_warmup_steps // 10, 1), resume=cfg.resume, report_to=cfg.report_to,
        threads=cfg.threads,
    )
    train_sft(sft_cfg)
    return str(model)
