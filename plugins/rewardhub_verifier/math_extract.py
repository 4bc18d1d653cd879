"""Answer extraction and normalisation for the math checker: pure string work, no sympy.

Finding the final answer in a completion (``\\boxed{}``, ``####``, "the answer is", the last number) and
rewriting it into a canonical string (no ``$``, ``\\left``, units, ``\\text{}``, thousands separators, ...)
is cheap, regex-only code that both the in-process fast path (:func:`~rewardhub_verifier.math_answer.quick_check`)
and the sympy comparison build on; it lives apart from the equivalence logic so that it can be read, tested
and imported without pulling in anything heavier.
"""

from __future__ import annotations

import re
from fractions import Fraction

#: answers longer than this (after normalisation) are compared as strings only
MAX_ANSWER_CHARS = 1000


# --------------------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|:)\s*:?", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"\.(?=\s|$)|\n")
_NUMBER_RE = re.compile(
    r"(?:(?<![\w)\]])-)?"  # a minus sign that is not a binary minus
    r"(?<![\d.])"
    r"(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+(?:\.\d+)?|\.\d+)"
    r"(?:/\d+(?![\d.]))?"
)


def _match_brace(s: str, start: int) -> int:
    """Index of the ``}`` matching the ``{`` at ``start`` (escaped braces skipped); -1 if unbalanced."""
    depth = 0
    i, n = start, len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _boxed_content(text: str) -> tuple[bool, str | None]:
    """(found, content) for the last well-formed ``\\boxed``/``\\fbox`` in ``text``."""
    found = False
    # only the last few boxes: each try scans to the end of the text, so trying all would be quadratic
    for m in reversed(list(_BOX_RE.finditer(text))[-4:]):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            end = _match_brace(text, i)
            if end < 0:  # truncated box: try an earlier one
                continue
            return True, text[i + 1 : end].strip()
        # "\boxed 5": the argument runs to the next space or "$"
        arg = re.match(r"[^\s$]+", text[i:])
        if arg and m.end() < i:
            return True, arg.group(0)
        found = True
    return found, None


def _strip_answer_text(s: str) -> str:
    s = s.strip()
    s = s.strip("*").strip()  # markdown bold
    return s


def extract_answer(completion: str) -> str | None:
    """The final answer written in ``completion``, or None.

    Priority: the last ``\\boxed{...}``/``\\fbox{...}`` (nested braces matched by a scan; an empty box gives
    None), then the last ``#### x`` line (GSM8K), then the last "the answer is x" / "answer: x" (to the end of
    the sentence or line), then the last number in the text (``-3``, ``2.5``, ``3/4``, ``1,234``).
    """
    if not completion:
        return None
    if "\\boxed" in completion or "\\fbox" in completion:
        found, content = _boxed_content(completion)
        if content is not None:
            return content or None
        if found:
            return None
    pos = completion.rfind("####")
    if pos >= 0:
        line = completion[pos + 4 :].split("\n", 1)[0]
        line = _strip_answer_text(line)
        if line:
            return line
    last = None
    for last in _ANSWER_IS_RE.finditer(completion):  # noqa: B007 - we want the last match
        pass
    if last is not None:
        rest = completion[last.end() :]
        end = _SENTENCE_END_RE.search(rest)
        ans = _strip_answer_text(rest[: end.start()] if end else rest)
        if ans:
            return ans
    num = None
    for num in _NUMBER_RE.finditer(completion):  # noqa: B007
        pass
    return num.group(0) if num is not None else None


# --------------------------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------------------------

_UNIT_WORDS = frozenset(
    [
        "cm",
        "m",
        "km",
        "mm",
        "nm",
        "in",
        "inch",
        "inches",
        "ft",
        "feet",
        "foot",
        "yd",
        "yard",
        "yards",
        "mile",
        "miles",
        "mi",
        "mph",
        "kph",
        "kmh",
        "kg",
        "g",
        "mg",
        "gram",
        "grams",
        "kilogram",
        "kilograms",
        "lb",
        "lbs",
        "pound",
        "pounds",
        "oz",
        "ounce",
        "ounces",
        "ton",
        "tons",
        "s",
        "sec",
        "secs",
        "second",
        "seconds",
        "min",
        "mins",
        "minute",
        "minutes",
        "h",
        "hr",
        "hrs",
        "hour",
        "hours",
        "day",
        "days",
        "week",
        "weeks",
        "month",
        "months",
        "year",
        "years",
        "l",
        "ml",
        "liter",
        "liters",
        "litre",
        "litres",
        "gallon",
        "gallons",
        "cup",
        "cups",
        "dollar",
        "dollars",
        "cent",
        "cents",
        "euro",
        "euros",
        "usd",
        "degree",
        "degrees",
        "deg",
        "radian",
        "radians",
        "rad",
        "percent",
        "unit",
        "units",
        "sq",
        "square",
        "cubic",
        "meter",
        "meters",
        "metre",
        "metres",
        "centimeter",
        "centimeters",
    ]
)
#: words that are part of the mathematics, never a unit
_MATH_WORDS = frozenset(
    [
        "and",
        "or",
        "pi",
        "sqrt",
        "frac",
        "infty",
        "inf",
        "oo",
        "sin",
        "cos",
        "tan",
        "cot",
        "sec",
        "csc",
        "log",
        "ln",
        "exp",
        "mod",
        "i",
        "e",
        "x",
        "y",
        "z",
        "n",
        "k",
    ]
)
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox|operatorname)\s*\{")
_ASSIGN_RE = re.compile(r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?[A-Za-z0-9]+\}?)?\s*=\s*(?P<rhs>[^=<>]+)$")
_THOUSANDS_RE = re.compile(r"(?<![\d.])(\d{1,3})((?:,\d{3})+)(?![\d])")
_MIXED_LATEX_RE = re.compile(r"^(-?)(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}$")
_MIXED_PLAIN_RE = re.compile(r"^(-?)(\d+)\s+(\d+)\s*/\s*(\d+)$")


def _unwrap_command(s: str, pattern: re.Pattern[str], keep_spaces: bool = True) -> str:
    """Replace ``\\cmd{content}`` by `` content `` for every match of ``pattern`` (which ends at ``{``)."""
    for _ in range(50):
        m = pattern.search(s)
        if not m:
            break
        end = _match_brace(s, m.end() - 1)
        if end < 0:
            s = s[: m.start()] + s[m.end() :]
            continue
        inner = s[m.end() : end]
        s = s[: m.start()] + (f" {inner} " if keep_spaces else inner) + s[end + 1 :]
    return s


_UNIT_TAIL_RE = re.compile(r"([A-Za-z]+)\s*(?:\^\s*\{?[23]\}?)?\.?$")


def _is_unit_word(w: str) -> bool:
    lw = w.lower()
    return lw in _UNIT_WORDS or lw == "per" or (len(w) >= 3 and lw not in _MATH_WORDS)


def _strip_units(s: str) -> str:
    """Drop trailing unit words after a number: ``5 cm``, ``12 apples``, ``3 m^2``, ``4 km/h``.

    Works on the last 80 characters only (a unit tail is short), so the cost stays bounded on huge input.
    """
    head = s
    for _ in range(6):
        m = _UNIT_TAIL_RE.search(head[-80:])
        if not m:
            break
        start = len(head) - len(head[-80:]) + m.start()
        before = head[:start]
        w = m.group(1)
        if before.endswith("\\") or before.endswith("_") or not _is_unit_word(w):
            break
        stripped = before.rstrip()
        sep = stripped != before
        if stripped.endswith("/"):
            stripped, sep = stripped[:-1].rstrip(), True
        elif stripped.endswith(" per"):
            stripped, sep = stripped[:-4].rstrip(), True
        if len(w) < 2 and not sep:
            break  # "5x" is a product, not 5 with a unit
        head = stripped
        if head and (head[-1].isdigit() or head[-1] in "})" or head.endswith("\\pi")):
            return head
    return s


def normalize_answer(s: str) -> str:
    """Canonical string form of an answer, for comparison.

    Strips ``$``, ``\\(``/``\\)``, ``\\[``/``\\]``, ``\\left``/``\\right``, spacing commands
    (``\\!``, ``\\,``, ...), thousands separators inside digit groups (``1,234,567``; a tuple ``(1,2)`` is
    left alone), ``\\%``/``%``, degrees (``^\\circ``, ``°``, "degrees"), ``\\text{...}``/``\\mathrm{...}``
    wrappers and unit words (``5 cm``, ``5 \\text{ dollars}``), a single-variable assignment (``x = 5`` ->
    ``5``), a trailing period and surrounding spaces; rewrites ``\\dfrac``/``\\tfrac`` to ``\\frac``,
    ``\\frac12`` to ``\\frac{1}{2}`` and
    mixed numbers (``2\\frac{1}{2}``, ``2 1/2``) to ``5/2``.
    """
    if s is None:
        return ""
    s = str(s).strip()
    if len(s) > 20 * MAX_ANSWER_CHARS:
        return s  # too long to be an answer; only string equality will ever match it
    if s.startswith("\\boxed") or s.startswith("\\fbox"):
        _found, inner = _boxed_content(s)
        if inner is not None:
            s = inner
    s = s.replace("\n", " ").replace("\t", " ")
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    s = s.replace("\\displaystyle", "")
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])\s*\.?", "", s)
    s = re.sub(r"(\d)\\[,!](?=\d{3}(?!\d))", r"\1", s)  # 1\,000 (thin-space thousands separator)
    s = re.sub(r"\\[!,;:> ]|\\q?quad(?![A-Za-z])|~", " ", s)
    s = s.replace("{,}", ",")
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*\{([^{}]*)\}\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\sqrt\s*(\d)", r"\\sqrt{\1}", s)
    # degrees and percent
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree", "", s)
    s = s.replace("\\%", "").replace("%", "")
    s = _unwrap_command(s, _TEXT_CMD_RE)
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"\s*\b(?:degrees?|percent)\b\.?$", "", s)
    # a single-variable assignment "x = 5" -> "5"
    m = _ASSIGN_RE.match(s)
    if m:
        s = m.group("rhs").strip()
    s = s.rstrip(".").strip()
    s = _strip_units(s)
    # thousands separators, but not inside a tuple / set / interval
    if not (s[:1] in "([{" or s.startswith("\\{")):
        s = _THOUSANDS_RE.sub(lambda mm: mm.group(1) + mm.group(2).replace(",", ""), s)
    # mixed numbers
    m = _MIXED_LATEX_RE.match(s) or _MIXED_PLAIN_RE.match(s)
    if m:
        sign, whole, num, den = m.groups()
        if int(den) != 0 and int(num) < int(den):
            value = int(whole) + Fraction(int(num), int(den))
            s = f"{sign}{value.numerator}/{value.denominator}" if value.denominator != 1 else f"{sign}{value}"
    s = s.rstrip(".").strip()
    # "{5}" -> "5" (a lone group), but keep "{1,2}" which is a set
    for _ in range(4):
        if not (len(s) >= 2 and s[0] == "{" and "," not in s and _match_brace(s, 0) == len(s) - 1):
            break
        s = s[1:-1].strip()
    return s


def _key(s: str) -> str:
    """Whitespace-free form for string comparison."""
    return re.sub(r"\s+", "", s)


def _gold_answer(gold: str) -> str:
    """A gold field may be a whole worked solution (GSM8K ``#### 72``, MATH ``\\boxed{..}``)."""
    if "\\boxed" in gold or "\\fbox" in gold or "####" in gold:
        extracted = extract_answer(gold)
        if extracted is not None:
            return extracted
    return gold
