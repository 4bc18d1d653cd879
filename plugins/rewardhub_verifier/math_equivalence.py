"""Equivalence of two normalised math answers: fast paths, structured answers, then sympy.

Deciding whether two answers denote the same object is the checker's core and its only expensive step: exact
rationals and multiple-choice letters first, then tuples, intervals, sets and unions element by element, then
sympy (structural equality, numeric closeness, random-point identity testing, ``simplify``) on each scalar. It
is kept apart from extraction (:mod:`rewardhub_verifier.math_extract`) and from the guarded parser
(:mod:`rewardhub_verifier.math_sympy`); the public entry points stay in :mod:`rewardhub_verifier.math_answer`.
"""

from __future__ import annotations

import math
import random
import re
from fractions import Fraction

from rewardhub_verifier.math_extract import MAX_ANSWER_CHARS, _key, _match_brace, normalize_answer
from rewardhub_verifier.math_sympy import _Refused, _to_sympy

#: at most this many elements in a tuple / set / interval list
MAX_ELEMENTS = 32


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
