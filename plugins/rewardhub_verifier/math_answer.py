"""Math answer checking: extraction, normalisation and equivalence, as pure functions.

Nothing here starts a process or installs a signal handler, so every function is safe to call from any
thread. None of them has a wall-clock bound either: sympy can be slow on adversarial input, and the cheap
guards below (length, nesting and power-size limits) only make that unlikely. The hard guarantee is
:class:`rewardhub_verifier.math_pool.MathCheckPool`, which runs :func:`check_answer` in worker processes and
SIGKILLs one that runs past its timeout.

Pipeline::

    extract_answer(completion)      -> the model's final answer as a string (or None)
    normalize_answer(answer)        -> strip $, \\left, units, \\text{}, %, degrees, "x =", ...
    answers_equivalent(pred, gold)  -> string equality, then exact rationals, then sympy

:func:`quick_check` is the sympy-free subset (extraction, normalisation, string and rational comparison,
multiple-choice letters); it returns ``None`` when only sympy could decide. The pool answers those cases
in-process without a round trip to a worker.

Untrusted text reaches sympy only through :func:`_to_sympy`: LaTeX is converted by a hand-written
translator (no ``sympy.parsing.latex``, no antlr), the result must pass a character and identifier
allow-list and a length/nesting limit, and ``parse_expr`` evaluates it with a minimal namespace whose
``__builtins__`` is empty.
"""

from __future__ import annotations

import keyword
import math
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from rewardhub.rewards import Status

__all__ = [
    "MathVerdict",
    "answers_equivalent",
    "check_answer",
    "equivalence",
    "extract_answer",
    "normalize_answer",
    "quick_check",
]

#: answers longer than this (after normalisation) are compared as strings only
MAX_ANSWER_CHARS = 1000
#: longest expression handed to sympy's parser (after LaTeX conversion)
MAX_SYMPY_CHARS = 400
#: deepest bracket nesting handed to sympy's parser
MAX_NESTING = 24
#: a power whose value would have more decimal digits than this is refused (e.g. 9^{9^{9}})
MAX_DIGITS = 10_000
#: at most this many elements in a tuple / set / interval list
MAX_ELEMENTS = 32


@dataclass(frozen=True)
class MathVerdict:
    """Result of checking one completion against a gold answer.

    Args:
        status: ``ok`` (equivalent), ``wrong`` or ``no_answer`` (nothing extractable); the pool adds
            ``timeout`` and ``error``.
        extracted: the answer taken from the completion, before normalisation (None if none).
        detail: how the decision was reached ("string", "rational", "sympy", "numeric", ...) or why not.
    """

    status: Status
    extracted: str | None
    detail: str = ""

    @property
    def correct(self) -> bool:
        return self.status is Status.OK


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


# --------------------------------------------------------------------------------------------------------
# fast paths: rationals and multiple choice
# --------------------------------------------------------------------------------------------------------

_DEC_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d{1,3})?")
_INT_FRAC_RE = re.compile(r"([-+]?\d+(?:\.\d+)?)/([-+]?\d+(?:\.\d+)?)")
_LATEX_FRAC_RE = re.compile(r"([-+]?)\\frac\{([-+]?\d+(?:\.\d+)?)\}\{([-+]?\d+(?:\.\d+)?)\}")
_MC_GOLD_RE = re.compile(r"\(?([A-J])\)?")
_MC_PRED_RE = re.compile(r"\(?([A-Ja-j])\)(?:\s.*)?|\(?([A-Ja-j])[.:]?")


def _as_rational(s: str) -> Fraction | None:
    """``s`` as an exact rational if it is a plain number (int, decimal, a/b, \\frac{a}{b}), else None."""
    t = _key(s)
    if not t or len(t) > 200:
        return None
    try:
        if _DEC_RE.fullmatch(t):
            return Fraction(t)
        m = _INT_FRAC_RE.fullmatch(t)
        if m:
            return Fraction(m.group(1)) / Fraction(m.group(2))
        m = _LATEX_FRAC_RE.fullmatch(t)
        if m:
            value = Fraction(m.group(2)) / Fraction(m.group(3))
            return -value if m.group(1) == "-" else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _close(a: float, b: float, rel_tol: float) -> bool:
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-12)


def _rational_equal(a: Fraction, b: Fraction, rel_tol: float) -> bool:
    if a == b:
        return True
    diff = abs(a - b)
    return diff <= Fraction(rel_tol) * max(abs(a), abs(b)) or diff <= Fraction(1, 10**12)


def _mc_letter(s: str) -> str | None:
    m = _MC_PRED_RE.fullmatch(s.strip())
    if not m:
        return None
    return (m.group(1) or m.group(2)).upper()


def _quick(p: str, g: str, rel_tol: float) -> tuple[bool, str] | None:
    """Decide with string / rational / letter comparison only; None when sympy is needed."""
    if not p or not g:
        return False, "empty answer"
    if p == g or _key(p) == _key(g):
        return True, "string"
    if len(g) >= 3 and g.replace(" ", "").isalpha() and p.lower() == g.lower():
        return True, "text"  # "Monday" vs "monday"
    if _MC_GOLD_RE.fullmatch(g):
        letter = _mc_letter(p)
        gl = _MC_GOLD_RE.fullmatch(g).group(1)  # type: ignore[union-attr]
        return (letter == gl), "choice"
    rp, rg = _as_rational(p), _as_rational(g)
    if rp is not None and rg is not None:
        return _rational_equal(rp, rg, rel_tol), "rational"
    if len(p) > MAX_ANSWER_CHARS or len(g) > MAX_ANSWER_CHARS:
        return False, "answer too long to compare"
    return None


# --------------------------------------------------------------------------------------------------------
# LaTeX -> sympy
# --------------------------------------------------------------------------------------------------------

_FUNCS = {
    "sin": "sin", "cos": "cos", "tan": "tan", "cot": "cot", "sec": "sec", "csc": "csc",
    "arcsin": "asin", "arccos": "acos", "arctan": "atan", "sinh": "sinh", "cosh": "cosh", "tanh": "tanh",
    "log": "log", "ln": "log", "exp": "exp", "lg": "log10",
}  # fmt: skip
_GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta", "iota",
    "kappa", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "varphi", "chi", "psi", "omega",
}  # fmt: skip
_SYMBOL_CMDS = {
    "pi": " pi ",
    "infty": " oo ",
    "infinity": " oo ",
    "cdot": "*",
    "times": "*",
    "ast": "*",
    "div": "/",
    "lambda": " lamda ",
    "Delta": " Delta ",
    "Omega": " Omega ",
    "Phi": " Phi ",
}
_DROP_CMDS = {
    "left",
    "right",
    "displaystyle",
    "limits",
    "nolimits",
    "big",
    "Big",
    "bigg",
    "Bigg",
    "quad",
    "qquad",
    ",",
    "!",
    ";",
    ":",
    " ",
}
_UNWRAP_CMDS = {"text", "textbf", "textrm", "mathrm", "mathbf", "mathit", "operatorname", "mbox"}
_ALLOWED_CHARS_RE = re.compile(r"[0-9A-Za-z_+\-*/()., ]*")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SUBSCRIPT_NAME_RE = re.compile(r"[A-Za-z]_[A-Za-z0-9]{1,4}")


#: names the parser's own transformations emit; input may not call them directly (Pow(9, Pow(9, 9)))
_INTERNAL_NAMES = frozenset({"Symbol", "Integer", "Float", "Rational", "Function", "Add", "Mul", "Pow", "Number"})


class _Refused(ValueError):
    """The expression is not something we are willing to hand to sympy."""


def _read_arg(s: str, i: int) -> tuple[str, int]:
    """Read one LaTeX argument at ``s[i]``: a ``{group}``, a ``\\command`` or a single character."""
    n = len(s)
    while i < n and s[i] == " ":
        i += 1
    if i >= n:
        raise _Refused("missing argument")
    if s[i] == "{":
        end = _match_brace(s, i)
        if end < 0:
            raise _Refused("unbalanced braces")
        return s[i + 1 : end], end + 1
    if s[i] == "\\":
        m = re.match(r"\\[A-Za-z]+", s[i:])
        if m:
            return m.group(0), i + m.end()
        return s[i : i + 2], i + 2
    return s[i], i + 1


def _latex_to_py(s: str, depth: int = 0) -> str:
    """Translate a LaTeX (or plain) math expression to a sympy-parsable string; raise _Refused if unknown."""
    if depth > MAX_NESTING:
        raise _Refused("too deeply nested")
    out: list[str] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            m = re.match(r"\\([A-Za-z]+|.)", s[i:])
            if not m:
                raise _Refused("dangling backslash")
            name = m.group(1)
            i += m.end()
            if name == "frac" or name == "dfrac" or name == "tfrac":
                a, i = _read_arg(s, i)
                b, i = _read_arg(s, i)
                out.append(f"(({_latex_to_py(a, depth + 1)})/({_latex_to_py(b, depth + 1)}))")
            elif name == "binom":
                a, i = _read_arg(s, i)
                b, i = _read_arg(s, i)
                out.append(f" binomial({_latex_to_py(a, depth + 1)},{_latex_to_py(b, depth + 1)})")
            elif name == "sqrt":
                index = None
                j = i
                while j < n and s[j] == " ":
                    j += 1
                if j < n and s[j] == "[":
                    close = s.find("]", j)
                    if close < 0:
                        raise _Refused("unbalanced [")
                    index = s[j + 1 : close]
                    i = close + 1
                a, i = _read_arg(s, i)
                inner = _latex_to_py(a, depth + 1)
                if index is None:
                    out.append(f" sqrt({inner})")
                else:
                    out.append(f" root({inner},{_latex_to_py(index, depth + 1)})")
            elif name in _FUNCS:
                out.append(f" {_FUNCS[name]}")
            elif name in _SYMBOL_CMDS:
                out.append(_SYMBOL_CMDS[name])
            elif name in _GREEK:
                out.append(f" {name.removeprefix('var')} ")
            elif name in _DROP_CMDS:
                pass
            elif name in _UNWRAP_CMDS:
                a, i = _read_arg(s, i)
                out.append(f" {_latex_to_py(a, depth + 1)} ")
            elif name in ("{", "}"):
                raise _Refused("set braces inside a scalar")
            else:
                raise _Refused(f"unsupported LaTeX command \\{name}")
        elif c == "{":
            end = _match_brace(s, i)
            if end < 0:
                raise _Refused("unbalanced braces")
            out.append(f"({_latex_to_py(s[i + 1 : end], depth + 1)})")
            i = end + 1
        elif c == "}":
            raise _Refused("unbalanced braces")
        elif c == "^":
            out.append("**")
            i += 1
        elif c == "_":
            # subscript: x_1, x_{12} -> x_1, x_12 (part of the symbol name)
            a, i = _read_arg(s, i + 1)
            if not re.fullmatch(r"[A-Za-z0-9]{1,4}", a):
                raise _Refused("unsupported subscript")
            out.append(f"_{a}")
        elif c == "[" or c == "]":
            out.append("(" if c == "[" else ")")
            i += 1
        elif c == "·" or c == "×":
            out.append("*")
            i += 1
        elif c == "−":
            out.append("-")
            i += 1
        elif c == "π":
            out.append(" pi ")
            i += 1
        elif c == "√":
            a, i = _read_arg(s, i + 1)
            out.append(f" sqrt({_latex_to_py(a, depth + 1)})")
        else:
            out.append(c)
            i += 1
    return "".join(out)


_ALLOWED_NAMES: dict[str, object] | None = None
_LOCALS: dict[str, object] | None = None


def _namespaces() -> tuple[dict[str, object], dict[str, object]]:
    """The (global, local) namespaces for parse_expr: only what the translator can emit."""
    global _ALLOWED_NAMES, _LOCALS
    if _ALLOWED_NAMES is None:
        import sympy

        names = [
            "Symbol", "Integer", "Float", "Rational", "Function", "Add", "Mul", "Pow", "Number",
            "sqrt", "root", "pi", "oo", "E", "I", "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos",
            "atan", "sinh", "cosh", "tanh", "log", "exp", "binomial", "Abs",
        ]  # fmt: skip
        g: dict[str, object] = {name: getattr(sympy, name) for name in names}
        g["log10"] = lambda x: sympy.log(x, 10)
        g["__builtins__"] = {}
        _ALLOWED_NAMES = g
        _LOCALS = {"e": sympy.E, "i": sympy.I}
    assert _LOCALS is not None
    return _ALLOWED_NAMES, _LOCALS


def _check_py(code: str) -> None:
    """Refuse anything but arithmetic on numbers, short symbol names and the allowed functions."""
    if len(code) > MAX_SYMPY_CHARS:
        raise _Refused("expression too long")
    if not _ALLOWED_CHARS_RE.fullmatch(code):
        raise _Refused("characters outside the allow-list")
    if "__" in code:
        raise _Refused("double underscore")
    if re.search(r"\d\.?[eE][-+]?\d{4,}", code):
        raise _Refused("exponent too large")  # 1e999999 would become a million-digit Rational
    # a dot may only be a decimal point
    if "." in code and "." in re.sub(r"\d*\.\d+|\d+\.(?![A-Za-z_.])", "", code):
        raise _Refused("'.' outside a number")
    depth = 0
    for ch in code:
        if ch == "(":
            depth += 1
            if depth > MAX_NESTING:
                raise _Refused("too deeply nested")
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise _Refused("unbalanced parentheses")
    if depth != 0:
        raise _Refused("unbalanced parentheses")
    g, _ = _namespaces()
    for m in _IDENT_RE.finditer(code):
        name = m.group(0)
        if keyword.iskeyword(name) or keyword.issoftkeyword(name):
            raise _Refused(f"keyword {name!r}")
        if name in _INTERNAL_NAMES:
            raise _Refused(f"name {name!r}")
        if name in g or name in ("e", "i", "lamda") or name.lstrip("_") in _GREEK:
            continue
        if _SUBSCRIPT_NAME_RE.fullmatch(name):
            continue
        if "_" in name:
            raise _Refused(f"name {name!r}")
        if name.isalpha() and len(name) <= 6:
            continue  # split into single-letter symbols by the parser ("xy" -> x*y)
        raise _Refused(f"name {name!r}")


def _mag(expr: object) -> float:
    """An upper bound of log10|value| for the numeric parts of an unevaluated sympy expression.

    Symbols count as 10. Used to refuse ``9^{9^{9}}``-style towers before anything evaluates them.
    """
    import sympy

    if not isinstance(expr, sympy.Basic):
        return 0.0
    if expr.is_Integer:
        return math.log10(abs(int(expr))) if expr != 0 else 0.0
    if expr.is_Rational:
        return math.log10(max(abs(expr.p), abs(expr.q)))
    if expr.is_Float:
        f = abs(float(expr))
        if not math.isfinite(f):
            return math.inf
        return abs(math.log10(f)) if f > 0 else 0.0
    if expr.is_Atom:
        return 1.0
    if expr.is_Pow:
        base, ex = expr.args
        if base in (sympy.S.Zero, sympy.S.One, sympy.S.NegativeOne):
            return 0.0
        me = _mag(ex)
        if me > 7:
            return math.inf
        return max(_mag(base), 0.31) * 10**me
    args = expr.args
    if not args:
        return 1.0
    mags = [_mag(a) for a in args]
    if expr.is_Mul:
        return sum(mags)
    if isinstance(expr, sympy.binomial):
        return math.inf if max(mags) > 4 else 10 ** max(mags) * 0.31
    return max(mags) + math.log10(len(args))


_TRANSFORMS = None


@lru_cache(maxsize=4096)
def _to_sympy(s: str) -> object:
    """Parse a normalised scalar answer into a sympy expression; raise _Refused / sympy errors."""
    global _TRANSFORMS
    from sympy.parsing.sympy_parser import (
        implicit_multiplication_application,
        parse_expr,
        rationalize,
        standard_transformations,
    )

    if _TRANSFORMS is None:
        _TRANSFORMS = (*standard_transformations, implicit_multiplication_application, rationalize)
    code = _latex_to_py(s)
    code = re.sub(r"\s+", " ", code).strip()
    if not code:
        raise _Refused("empty expression")
    _check_py(code)
    g, loc = _namespaces()
    if "**" in code or "binomial" in code:
        # size guard on the unevaluated tree: refuse 9**9**9 and friends before anything evaluates them
        unevaluated = parse_expr(code, local_dict=dict(loc), global_dict=g, transformations=_TRANSFORMS, evaluate=False)
        if _mag(unevaluated) > MAX_DIGITS:
            raise _Refused("power too large to evaluate")
    return parse_expr(code, local_dict=dict(loc), global_dict=g, transformations=_TRANSFORMS)


# --------------------------------------------------------------------------------------------------------
# structured answers: tuples, sets, intervals, unions
# --------------------------------------------------------------------------------------------------------

_OPEN = "([{"
_CLOSE = ")]}"


def _split_top(s: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside any bracket; ``\\{``/``\\}`` count as brackets."""
    parts, depth, start, i = [], 0, 0, 0
    n, k = len(s), len(sep)
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n and s[i + 1] in "{}":
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i + k
            i += k
            continue
        i += 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def _outer_closes_at_end(s: str) -> bool:
    """Whether the bracket opening ``s`` is closed by its last character (any bracket kinds)."""
    depth = 0
    for idx, c in enumerate(s):
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
            if depth == 0:
                return idx == len(s) - 1
    return False


def _structure(s: str) -> tuple[str, str, list[str]] | None:
    """``(kind, delimiters, elements)`` for a set, tuple/interval or bare list; None for a scalar."""
    if len(_split_top(s, "\\cup")) > 1:
        return "union", "", _split_top(s, "\\cup")
    if s.startswith("\\{") and s.endswith("\\}"):
        inner = s[2:-2].strip()
        return "set", "{}", _split_top(inner) if inner else []
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _outer_closes_at_end(s):
        elems = _split_top(s[1:-1])
        if len(elems) >= 2:
            return "seq", s[0] + s[-1], elems
        return None
    if len(s) >= 2 and s[0] == "{" and s[-1] == "}" and _match_brace(s, 0) == len(s) - 1:
        inner = s[1:-1].strip()
        elems = _split_top(inner) if inner else []
        if len(elems) >= 2:
            return "set", "{}", elems
        return None
    elems = _split_top(s)
    if len(elems) >= 2:
        return "list", "", elems
    return None


def _unordered_match(ps: list[str], gs: list[str], rel_tol: float) -> bool:
    if len(ps) != len(gs):
        return False
    remaining = list(gs)
    for p in ps:
        for j, g in enumerate(remaining):
            if _equiv(p, g, rel_tol)[0]:
                del remaining[j]
                break
        else:
            return False
    return True


# --------------------------------------------------------------------------------------------------------
# equivalence
# --------------------------------------------------------------------------------------------------------


def _numeric(expr: object) -> complex | None:
    import sympy

    try:
        v = sympy.N(expr, 30)
        c = complex(v)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        return None
    if not (math.isfinite(c.real) and math.isfinite(c.imag)):
        return None
    return c


def _numeric_at(expr: object, point: dict) -> complex | None:
    """``expr`` evaluated numerically at ``point`` (evalf with subs: no substituted tree is built)."""
    try:
        c = complex(expr.evalf(30, subs=point))  # type: ignore[attr-defined]
    except (TypeError, ValueError, OverflowError, ZeroDivisionError, AttributeError):
        return None
    if not (math.isfinite(c.real) and math.isfinite(c.imag)):
        return None
    return c


def _complex_close(a: complex, b: complex, rel_tol: float) -> bool:
    scale = max(abs(a), abs(b))
    return abs(a - b) <= max(rel_tol * scale, 1e-12)


def _sympy_equal(a: object, b: object, rel_tol: float) -> tuple[bool, str]:
    import sympy

    if a == b:
        return True, "sympy"
    bad = (sympy.zoo, sympy.nan)
    if any(x.has(*bad) for x in (a, b)):  # type: ignore[attr-defined]
        return False, "undefined value (division by zero?)"
    if any(x in (sympy.oo, -sympy.oo) for x in (a, b)):
        return False, "infinity mismatch"
    free = a.free_symbols | b.free_symbols  # type: ignore[attr-defined]
    if not free:
        va, vb = _numeric(a), _numeric(b)
        if va is not None and vb is not None:
            return _complex_close(va, vb, rel_tol), "numeric"
    else:
        # identity testing at random points (cheap, and decisive when they differ)
        rng = random.Random(0x5EED)
        agree = 0
        for _ in range(8):
            point = {sym: sympy.Rational(rng.randint(11, 29), 10) for sym in free}
            va, vb = _numeric_at(a, point), _numeric_at(b, point)
            if va is None or vb is None:
                continue
            if not _complex_close(va, vb, max(rel_tol, 1e-9)):
                return False, "numeric (random point)"
            agree += 1
            if agree >= 4:
                return True, "numeric (random points)"
    try:
        if sympy.simplify(a - b) == 0:  # type: ignore[operator]
            return True, "simplify"
    except (TypeError, ValueError, AttributeError, RecursionError):
        pass
    return False, "sympy: not equal"


def _scalar_equiv(p: str, g: str, rel_tol: float) -> tuple[bool, str]:
    try:
        a = _to_sympy(p)
        b = _to_sympy(g)
    except _Refused as exc:
        return False, f"not compared: {exc}"
    except (SyntaxError, TypeError, ValueError, AttributeError, RecursionError, OverflowError,
            ZeroDivisionError, IndexError, KeyError) as exc:  # fmt: skip
        return False, f"parse failed: {type(exc).__name__}"
    try:
        return _sympy_equal(a, b, rel_tol)
    except (TypeError, ValueError, AttributeError, RecursionError, OverflowError, ZeroDivisionError) as exc:
        return False, f"sympy failed: {type(exc).__name__}"


def _equiv(p: str, g: str, rel_tol: float) -> tuple[bool, str]:
    """Equivalence of two *normalised* answers, with the reason."""
    quick = _quick(p, g, rel_tol)
    if quick is not None:
        return quick
    sp, sg = _structure(p), _structure(g)
    if sp is not None or sg is not None:
        if sp is None or sg is None:
            return False, "structure mismatch"
        (kp, dp, ep), (kg, dg, eg) = sp, sg
        if len(ep) > MAX_ELEMENTS or len(eg) > MAX_ELEMENTS:
            return False, "too many elements"
        ep = [normalize_answer(x) for x in ep]
        eg = [normalize_answer(x) for x in eg]
        if kp == "seq" and kg == "seq":
            if dp != dg:
                return False, f"delimiters differ ({dp} vs {dg})"
            if len(ep) != len(eg):
                return False, "length differs"
            ok = all(_equiv(x, y, rel_tol)[0] for x, y in zip(ep, eg))
            return ok, "tuple/interval"
        unordered = {"set", "list"}
        if (kp in unordered and kg in unordered) or (kp == "union" and kg == "union"):
            return _unordered_match(ep, eg, rel_tol), kp if kp == kg else "set/list"
        return False, f"structure mismatch ({kp} vs {kg})"
    # equations: both sides must agree up to sign
    if p.count("=") == 1 and g.count("=") == 1 and "<" not in p + g and ">" not in p + g:
        lp, rp = p.split("=")
        lg, rg = g.split("=")
        ok, why = _scalar_equiv(f"({lp})-({rp})", f"({lg})-({rg})", rel_tol)
        if not ok:
            ok, why = _scalar_equiv(f"({lp})-({rp})", f"({rg})-({lg})", rel_tol)
        return ok, f"equation {why}"
    if any(ch in p + g for ch in "=<>≤≥") or "\\le" in p + g or "\\ge" in p + g:
        return False, "relations compared as strings only"
    return _scalar_equiv(p, g, rel_tol)


def equivalence(pred: str, gold: str, rel_tol: float = 1e-6) -> tuple[bool, str]:
    """Like :func:`answers_equivalent`, but also returns how the decision was reached."""
    p, g = normalize_answer(pred), normalize_answer(gold)
    return _equiv(p, g, rel_tol)


def answers_equivalent(pred: str, gold: str, rel_tol: float = 1e-6) -> bool:
    """Whether two answer strings denote the same mathematical object.

    Fast paths first, without sympy: normalised string equality, exact rationals (``0.5`` vs ``\\frac{1}{2}``,
    compared exactly, then within ``rel_tol``), multiple-choice letters (gold ``B`` matches ``(B)``, ``b``,
    ``B)``). Then structure: tuples and intervals compare element-wise and their brackets must match
    (``[1, 2)`` is not ``(1, 2)``), sets ``\\{1,2\\}`` and bare lists ``1, 2`` compare order-insensitively.
    Then sympy on each scalar: structural equality, numeric closeness (``rel_tol``) for constants,
    agreement at random points for expressions with symbols, and ``simplify(a - b) == 0`` as the last
    resort. Powers too large to evaluate (``9^{9^{9}}``) and unparseable text compare unequal.
    """
    return equivalence(pred, gold, rel_tol)[0]


def _gold_answer(gold: str) -> str:
    """A gold field may be a whole worked solution (GSM8K ``#### 72``, MATH ``\\boxed{..}``)."""
    if "\\boxed" in gold or "\\fbox" in gold or "####" in gold:
        extracted = extract_answer(gold)
        if extracted is not None:
            return extracted
    return gold


def _prepare(completion: str, gold: str) -> tuple[str | None, str, str]:
    extracted = extract_answer(completion)
    if extracted is None:
        return None, "", ""
    return extracted, normalize_answer(extracted), normalize_answer(_gold_answer(gold))


def quick_check(completion: str, gold: str, rel_tol: float = 1e-6) -> MathVerdict | None:
    """The sympy-free part of :func:`check_answer`; None when only sympy can decide.

    Cheap (regexes and rationals, linear in the input) and safe to run in the trainer process: the pool uses
    it to answer obvious cases without a round trip to a worker.
    """
    extracted, p, g = _prepare(completion, gold)
    if extracted is None or not p:
        return MathVerdict(Status.NO_ANSWER, extracted, "no answer found")
    quick = _quick(p, g, rel_tol)
    if quick is None:
        return None
    ok, why = quick
    return MathVerdict(Status.OK if ok else Status.WRONG, extracted, why)


def check_answer(completion: str, gold: str, rel_tol: float = 1e-6) -> MathVerdict:
    """Extract the answer from ``completion`` and compare it with ``gold``.

    ``gold`` may be a bare answer or a worked solution ending in ``#### x`` or ``\\boxed{x}``. Returns
    ``no_answer`` when nothing can be extracted, else ``ok`` / ``wrong``. Has no time limit of its own: run
    it through :class:`~rewardhub_verifier.math_pool.MathCheckPool` for untrusted completions.
    """
    extracted, p, g = _prepare(completion, gold)
    if extracted is None or not p:
        return MathVerdict(Status.NO_ANSWER, extracted, "no answer found")
    ok, why = _equiv(p, g, rel_tol)
    return MathVerdict(Status.OK if ok else Status.WRONG, extracted, why)
