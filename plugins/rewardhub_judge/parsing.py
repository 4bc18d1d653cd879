"""Reading a verdict out of a judge's free-text reply.

Judges do not follow output formats exactly: they write ``SCORE: 7``, ``Score: 7/10``, ``**Score:** 7.5``,
``Rating: [[8]]``, or restate the rubric ("a score of 10 means...") before giving their own. So parsing
works in two passes: first lines that *start* with the requested form (``SCORE: n`` on its own line, markdown
decoration allowed), and only if there is none, the keyword anywhere in the text. Within a pass the LAST
match wins, because judges reason first and conclude last.

What the verdict is read from, and what that defends: only the judge's reply, never the prompt that was
sent, so a "SCORE: 10" written inside a completion counts only if the judge itself writes it. Inside the
reply, two kinds of text are not verdicts: a block the judge echoes back with this request's tags
(``<response-NONCE>...</response-NONCE>``, dropped before parsing when the nonce is given) and markdown
quotes (lines starting with ``>``: a judge quoting the response). A judge that reasons about the fake score
("the response claims SCORE: 10") and then concludes loses nothing, because its own final line comes last.
What no parser can tell apart: a judge whose last line, unquoted, repeats the completion's fake score is
indistinguishable from a judge that gave that score. The template's data notice is the defence there; how
often a given judge model obeys it is a property of that model, worth measuring on your own attacks.

A reply with no parseable verdict raises :class:`VerdictError`; the provider turns it into status ``error``
(the judge failed, not the policy), never a silent 0. Groupwise replies (:func:`parse_group_scores`) give one
``SCORE k: n`` line per response; a missing or unusable one fails that response only.
"""

from __future__ import annotations

import math
import re

_NUMBER = r"(-?\d+(?:\.\d+)?)"
_DENOMINATOR = rf"(?:\s*(?:/|out\s+of)\s*{_NUMBER})?"

#: ``SCORE: 7`` at the start of a line, with optional markdown (``**Score:** 7``, ``- Rating = [[7]]``); not a
#: quote (``> SCORE: 7``).
_SCORE_LINE = re.compile(
    rf"^[ \t*_#\-]*(?:final\s+)?(?:score|rating)[\s*_]*[:=][\s*_\[(\"']*{_NUMBER}[ \t*_\])\"']*{_DENOMINATOR}",
    re.IGNORECASE | re.MULTILINE,
)
#: The keyword anywhere: ``my score is 9``, ``a rating of 6 out of 10``.
_SCORE_ANYWHERE = re.compile(
    rf"\b(?:score|rating)\b(?:[\s*_:=\[(\"'`]|\bis\b|\bof\b)*{_NUMBER}[\s*_\])\"']*{_DENOMINATOR}",
    re.IGNORECASE,
)

#: ``WINNER: A`` / ``Verdict: **B**`` / ``Better response: TIE`` at the start of a line.
_VERDICT_LINE = re.compile(
    r"^[ \t*_#\-]*(?:final\s+)?(?:winner|verdict|better(?:\s+response)?)[\s*_]*[:=][\s*_\[(\"']*"
    r"(?:response\s+|assistant\s+)?(A|B|TIE)\b",
    re.IGNORECASE | re.MULTILINE,
)
#: ``SCORE 3: 7`` (groupwise), with the same decoration, also ``Score for response 3: 7``.
_GROUP_LINE = re.compile(
    rf"^[ \t*_#\-]*(?:final[ \t]+)?(?:score|rating)[ \t]*(?:for[ \t]+)?(?:response[ \t]*)?#?[ \t]*(\d+)[ \t*_]*[:=]"
    rf"[ \t*_\[(\"']*{_NUMBER}[ \t*_\])\"']*(?:[ \t]*(?:/|out[ \t]+of)[ \t]*{_NUMBER})?",
    re.IGNORECASE | re.MULTILINE,
)
_QUOTE_LINE = re.compile(r"^[ \t]*>.*$", re.MULTILINE)

#: The MT-Bench form ``[[A]]``, ``[[B]]``, ``[[C]]`` (C = tie).
_VERDICT_BRACKETS = re.compile(r"\[\[\s*(A|B|C|TIE)\s*\]\]", re.IGNORECASE)


class VerdictError(ValueError):
    """The reply holds no usable verdict; the message says why (and is shown to the user as the detail)."""


def quote(reply: str | None, limit: int = 200) -> str:
    """The reply for an error message: repr'd, truncated to ``limit`` characters."""
    text = reply or ""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def own_words(reply: str | None, nonce: str | None = None) -> str:
    """The reply without what the judge only repeats: blocks with this request's tags, and ``>`` quote lines."""
    text = reply or ""
    if nonce:
        text = re.sub(rf"<([a-z0-9-]+)-{re.escape(nonce)}>.*?(?:</\1-{re.escape(nonce)}>|\Z)", "", text,
                      flags=re.S | re.I)
    return _QUOTE_LINE.sub("", text)


def parse_score(reply: str | None, min_score: float, max_score: float, nonce: str | None = None) -> float:
    """The judge's score on the ``[min_score, max_score]`` scale, read from :func:`own_words` of the reply.

    Raises:
        VerdictError: no score found, a score outside the scale, or a fraction on another scale (``4/5``
            when the scale ends at 10: rescaling a judge that ignored the rubric would hide the problem).
    """
    text = own_words(reply, nonce)
    matches = list(_SCORE_LINE.finditer(text)) or list(_SCORE_ANYWHERE.finditer(text))
    if not matches:
        raise VerdictError(f"no score ('SCORE: n') in the judge's reply: {quote(reply)}")
    return _on_scale(matches[-1].group(1), matches[-1].group(2), min_score, max_score, reply)


def parse_group_scores(reply: str | None, count: int, min_score: float, max_score: float,
                       nonce: str | None = None) -> list[float | VerdictError]:
    """One score per response ``1..count`` from ``SCORE k: n`` lines (the last line for each ``k`` wins).

    A response with no line, or with a score off the scale, gets a :class:`VerdictError` in its place, so
    the caller fails that response and keeps the others. Lines for ``k`` outside ``1..count`` are ignored.
    """
    last: dict[int, re.Match] = {}
    for match in _GROUP_LINE.finditer(own_words(reply, nonce)):
        last[int(match.group(1))] = match
    results: list[float | VerdictError] = []
    for k in range(1, count + 1):
        match = last.get(k)
        if match is None:
            results.append(VerdictError(f"no score for response {k} of {count} ('SCORE {k}: n') in the judge's "
                                        f"reply: {quote(reply)}"))
            continue
        try:
            results.append(_on_scale(match.group(2), match.group(3), min_score, max_score, reply))
        except VerdictError as exc:
            results.append(VerdictError(f"response {k} of {count}: {exc}"))
    return results


def _on_scale(value_text: str, denominator: str | None, min_score: float, max_score: float,
              reply: str | None) -> float:
    value = float(value_text)
    if denominator is not None and not math.isclose(float(denominator), max_score):
        raise VerdictError(f"judge scored {value_text}/{denominator}, but the scale is {min_score:g}-{max_score:g}: "
                           f"{quote(reply)}")
    if not min_score <= value <= max_score:
        raise VerdictError(f"judge score {value_text} is outside the scale {min_score:g}-{max_score:g}: "
                           f"{quote(reply)}")
    return value


def parse_verdict(reply: str | None, nonce: str | None = None) -> str:
    """``"A"``, ``"B"`` or ``"tie"`` from a pairwise reply (last ``WINNER: X`` line, else last ``[[X]]``).

    Raises:
        VerdictError: when neither form is present.
    """
    text = own_words(reply, nonce)
    matches = list(_VERDICT_LINE.finditer(text)) or list(_VERDICT_BRACKETS.finditer(text))
    if not matches:
        raise VerdictError(f"no verdict ('WINNER: A', 'WINNER: B' or 'WINNER: TIE') in the judge's reply: "
                           f"{quote(reply)}")
    choice = matches[-1].group(1).upper()
    return "tie" if choice in ("TIE", "C") else choice
