"""The ``reward-model`` provider: a learned Bradley-Terry scorer (``rewardhub train-rm``, or any one-output
sequence classifier) loaded by path or hub id, for RLHF: ``--reward=reward-model --reward-arg path=RM``.

Each sample is scored as the model was trained: prompt + completion + EOS (a conversational row's prompt
rendered with the chat template), with the prompt cut from the LEFT when too long, so the end of a long
conversation, the part the completion answers, is kept. Scores are normalised to mean 0 / std 1 with the
calibration statistics stored next to the model (``rewardhub_rm.json``), so reward scales are comparable
across reward models and KL coefficients carry over.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from rewardhub import Reward, RewardProvider, Sample, Status, hookimpl

log = logging.getLogger(__name__)


class RewardModelReward(RewardProvider):
    """Scores completions with a reward model.

    Args:
        path: directory or hub id of a one-output sequence classifier (e.g. ``runs/rm/model``).
        batch_size: samples per forward pass.
        max_length: longest scored sequence in tokens (the prompt is cut from the left to fit).
        normalize: report ``(score - mean) / std`` with the stored calibration statistics; a model without
            them (not trained by rewardhub) is used raw, with a warning.
    """

    def __init__(self, path: str, batch_size: int = 32, max_length: int = 512, normalize: bool = True):
        super().__init__()
        import torch

        from rewardhub.errors import ConfigError
        from rewardhub.models import load_model, load_tokenizer, resolve_model_path
        from rewardhub.recipes.reward_model import read_calibration

        problems = []
        if batch_size < 1:
            problems.append(f"reward-model: batch_size must be >= 1, got {batch_size}")
        if max_length < 2:
            problems.append(f"reward-model: max_length must be >= 2, got {max_length}")
        if problems:
            raise ConfigError(problems)
        self.path, self.batch_size, self.max_length = path, batch_size, max_length
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(path)
        self.model = load_model(path, kind="reward", tokenizer=self.tokenizer, device=str(self.device))
        self.model.eval().requires_grad_(False)
        self.calibration = read_calibration(resolve_model_path(path))
        self.normalize = normalize and self.calibration is not None
        if normalize and self.calibration is None:
            log.warning("reward-model %s has no rewardhub_rm.json calibration; scores are reported raw", path)
        self.raw_scores: list[float] = []

    # -- scoring ----------------------------------------------------------------------------------------------

    def encode(self, sample: Sample) -> list[int]:
        """Token ids scored for one sample (see the module docstring)."""
        from rewardhub.data import _split_chat, is_conversational
        from rewardhub.recipes.reward_model import encode_scored

        prompt, completion = sample.prompt, sample.completion
        row_prompt = sample.row.get("prompt") if isinstance(sample.row, Mapping) else None
        if is_conversational(row_prompt):
            reply = [{"role": "assistant", "content": completion}]
            prompt, completion = _split_chat(self.tokenizer, row_prompt, [*row_prompt, *reply], "sample")
        return encode_scored(self.tokenizer, prompt, completion, self.max_length)

    def raw(self, samples: Sequence[Sample]) -> list[float]:
        """Unnormalised scores (raises on failure; :meth:`score` turns failures into statuses)."""
        from rewardhub.recipes.reward_model import score_ids

        seqs = [self.encode(s) for s in samples]
        return score_ids(self.model, seqs, self.tokenizer.pad_token_id, self.batch_size, self.device)

    def score(self, samples: Sequence[Sample]) -> list[Reward]:
        out: list[Reward | None] = [None] * len(samples)
        for start in range(0, len(samples), self.batch_size):
            chunk = list(range(start, min(start + self.batch_size, len(samples))))
            try:
                values = self.raw([samples[i] for i in chunk])
            except Exception as exc:  # one bad batch must not stop the run: mark it failed
                for i in chunk:
                    out[i] = Reward.failed(Status.ERROR, f"reward model failed: {type(exc).__name__}: {exc}")
                continue
            for i, v in zip(chunk, values):
                if not math.isfinite(v):
                    out[i] = Reward.failed(Status.ERROR, f"reward model returned {v}")
                    continue
                self.raw_scores.append(v)
                out[i] = Reward(self.normalized(v))
        return out

    def normalized(self, value: float) -> float:
        if not self.normalize:
            return value
        return (value - self.calibration["mean"]) / self.calibration["std"]

    def compare(self, prompt: str, a: str, b: str, row: Mapping[str, Any] | None = None) -> float:
        """Bradley-Terry probability ``sigmoid(r_a - r_b)`` on the RAW scores (the scale the model learned)."""
        ra, rb = self.raw([Sample(prompt, a, row or {}), Sample(prompt, b, row or {})])
        return 1.0 / (1.0 + math.exp(-(ra - rb)))

    def metrics(self) -> dict[str, float]:
        m = super().metrics()
        if self.raw_scores:
            m["raw_mean"] = sum(self.raw_scores) / len(self.raw_scores)
        return m

    def close(self) -> None:
        self.model = None


@hookimpl
def rewardhub_register_rewards(register):
    register("reward-model", RewardModelReward,
             description="a learned Bradley-Terry reward model loaded by path (rewardhub train-rm), normalised")
