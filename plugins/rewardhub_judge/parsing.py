"""Reading a verdict out of a judge's free-text reply.

Judges do not follow output formats exactly: they write ``SCORE: 7``, ``Score: 7/10``, ``**Score:** 7.5``,
``Rating: [[8]]``, or restate the rubric ("a score of 10 means...") before giving their own. So parsing
works in two passes: first lines that *start* with the requested form (``SCORE: n`` on its own line, markdown
decoration allowed), and only if there is none, the keyword anywhere in the text. Within a pass the LAST
match wins, because judges reason first and conclude last.

A reply with no parseable verdict raises :class:`VerdictError`; the provider turns it into status ``error``
(the judge failed, not the policy), never a silent 0.
"""

from __future__ import annotations

import math
import re

_NUMBER = r"(-?\d+(?:\.\d+)?)"
_DENOMINATOR = rf"(?:\s*(?:/|out\s+of)\s*{_NUMBER})?"

#: ``SCORE: 7`` at the start of a line, with optional markdown (``**Score:** 7``, ``- Rating = [[7]]``).
_SCORE_LINE = re.compile(
    rf"^[\s*_#>\-]*(?:final\s+)?(?:score|rating)[\s*_]*[:=][\s*_\[(\"']*{_NUMBER}[\s*_\])\"']*{_DENOMINATOR}",
    re.IGNORECASE | re.MULTILINE,
)
#: The keyword anywhere: ``my score is 9``, ``a rating of 6 out of 10``.
_SCORE_ANYWHERE = re.compile(
    rf"\b(?:score|rating)\b(?:[\s*_:=\[(\"'`]|\bis\b|\bof\b)*{_NUMBER}[\s*_\])\"']*{_DENOMINATOR}",
    re.IGNORECASE,
)

#: ``WINNER: A`` / ``Verdict: **B**`` / ``Better response: TIE`` at the start of a line.
_VERDICT_LINE = re.compile(
    r"^[\s*_#>\-]*(?:final\s+)?(?:winner|verdict|better(?:\s+response)?)[\s*_]*[:=][\s*_\[(\"']*"
    r"(?:response\s+|assistant\s+)?(A|B|TIE)\b",
    re.IGNORECASE | re.MULTILINE,
)
#: The MT-Bench form ``[[A]]``, ``[[B]]``, ``[[C]]`` (C = tie).
_VERDICT_BRACKETS = re.compile(r"\[\[\s*(A|B|C|TIE)\s*\]\]", re.IGNORECASE)


class VerdictError(ValueError):
    """The reply holds no usable verdict; the message says why (and is shown to the user as the detail)."""


def quote(reply: str | None, limit: int = 200) -> str:
    """The reply for an error message: repr'd, truncated to ``limit`` characters."""
    text = reply or ""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_score(reply: str | None, min_score: float, max_score: float) -> float:
    """The judge's score on the ``[min_score, max_score]`` scale.

    Raises:
        VerdictError: no score found, a score outside the scale, or a fraction on another scale (``4/5``
            when the scale ends at 10: rescaling a judge that ignored the rubric would hide the problem).
    """
    text = reply or ""
    matches = list(_SCORE_LINE.finditer(text)) or list(_SCORE_ANYWHERE.finditer(text))
    if not matches:
        raise VerdictError(f"no score ('SCORE: n') in the judge's reply: {quote(reply)}")
    value_text, denominator = matches[-1].group(1), matches[-1].group(2)
    value = float(value_text)
    if denominator is not None and not math.isclose(float(denominator), max_score):
        raise VerdictError(f"judge scored {value_text}/{denominator}, but the scale is {min_score:g}-{max_score:g}: "
                           f"{quote(reply)}")
    if not min_score <= value <= max_score:
        raise VerdictError(f"judge score {value_text} is outside the scale {min_score:g}-{max_score:g}: "
                           f"{quote(reply)}")
    return value


def parse_verdict(reply: str | None) -> str:
    """``"A"``, ``"B"`` or ``"tie"`` from a pairwise reply (last ``WINNER: X`` line, else last ``[[X]]``).

    Raises:
        VerdictError: when neither form is present.
    """
    text = reply or ""
    matches = list(_VERDICT_LINE.finditer(text)) or list(_VERDICT_BRACKETS.finditer(text))
    if not matches:
        raise VerdictError(f"no verdict ('WINNER: A', 'WINNER: B' or 'WINNER: TIE') in the judge's reply: "
                           f"{quote(reply)}")
    choice = matches[-1].group(1).upper()
    return "tie" if choice in ("TIE", "C") else choice
