"""The only door from untrusted answer text into sympy: a LaTeX translator, an allow-list and size guards.

sympy's parser evaluates Python, so everything handed to it goes through :func:`_to_sympy` here: a hand-written
LaTeX-to-Python translator (no ``sympy.parsing.latex``, no antlr), a character and identifier allow-list, length,
nesting and power-size limits checked on the unevaluated tree, and ``parse_expr`` with a minimal namespace whose
``__builtins__`` is empty. Keeping that security boundary in one small module makes it easy to audit, apart
from the equivalence logic (:mod:`rewardhub_verifier.math_equivalence`) that uses its results.
"""

from __future__ import annotations

import keyword
import math
import re
from functools import lru_cache

from rewardhub_verifier.math_extract import _match_brace

#: longest expression handed to sympy's parser (after LaTeX conversion)
MAX_SYMPY_CHARS = 400
#: deepest bracket nesting handed to sympy's parser
MAX_NESTING = 24
#: a power whose value would have more decimal digits than this is refused (e.g. 9^{9^{9}})
MAX_DIGITS = 10_000


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
