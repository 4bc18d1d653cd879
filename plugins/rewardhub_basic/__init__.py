"""Small built-in reward providers: ``exact-match`` against a gold column, and ``length`` shaping.

They are useful on their own for quick experiments and as terms of a weighted mix
(``--reward=verifier=1.0,length=0.1``), and they register exactly as a third-party plugin does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from rewardhub import Reward, RewardProvider, Sample, Status, hookimpl


class ExactMatch(RewardProvider):
    """1.0 when the completion (stripped) equals the row's gold answer, else 0.0 (status ``wrong``).

    Args:
        column: the row column holding the gold answer.
        case_sensitive: compare case too (false: lower-case both first).
        first_line: compare only the completion's first line (the rest is ignored).

    Example:
        >>> ExactMatch()([Sample("2+2=", " 4 ", {"answer": 4})])[0].value
        1.0
    """

    reports_correctness = True

    def __init__(self, column: str = "answer", case_sensitive: bool = True, first_line: bool = True):
        super().__init__()
        self.column = column
        self.case_sensitive = case_sensitive
        self.first_line = first_line

    def _norm(self, text: str) -> str:
        text = text.strip()
        if self.first_line:
            text = text.split("\n", 1)[0].strip()
        return text if self.case_sensitive else text.lower()

    def score(self, samples: Sequence[Sample]) -> list[Reward]:
        out = []
        for s in samples:
            if self.column not in s.row or s.row[self.column] is None:
                out.append(Reward.failed(Status.ERROR, f"row has no {self.column!r} column (columns: {sorted(s.row)})"))
            elif not s.completion.strip():
                out.append(Reward(0.0, Status.NO_ANSWER))
            elif self._norm(s.completion) == self._norm(str(s.row[self.column])):
                out.append(Reward(1.0))
            else:
                out.append(Reward(0.0, Status.WRONG))
        return out


class Length(RewardProvider):
    """Length shaping: ``-len/scale`` (shorter is better), or ``-|len - target|/scale`` with a target.

    Args:
        target: the length to aim for; unset: shorter is better.
        scale: lengths per unit of reward (must be > 0).
        unit: count ``chars`` or whitespace-separated ``words``.

    Example:
        >>> Length(scale=10)([Sample("p", "abcde")])[0].value
        -0.5
    """

    def __init__(self, target: int | None = None, scale: float = 100.0, unit: Literal["chars", "words"] = "chars"):
        super().__init__()
        if scale <= 0:
            raise ValueError("length: scale must be > 0")
        self.target, self.scale, self.unit = target, scale, unit

    def score(self, samples: Sequence[Sample]) -> list[Reward]:
        out = []
        for s in samples:
            n = len(s.completion) if self.unit == "chars" else len(s.completion.split())
            distance = n if self.target is None else abs(n - self.target)
            out.append(Reward(-distance / self.scale))
        return out


@hookimpl
def rewardhub_register_rewards(register):
    register("exact-match", ExactMatch, description="1 if the completion equals the row's gold answer")
    register("length", Length, description="length shaping: -len/scale or -|len-target|/scale")
