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

Untrusted text reaches sympy only through :func:`~rewardhub_verifier.math_sympy._to_sympy`: LaTeX is
converted by a hand-written translator (no ``sympy.parsing.latex``, no antlr), the result must pass a
character and identifier allow-list and a length/nesting limit, and ``parse_expr`` evaluates it with a
minimal namespace whose ``__builtins__`` is empty.

The code lives in :mod:`~rewardhub_verifier.math_extract` (extraction, normalisation),
:mod:`~rewardhub_verifier.math_sympy` (the guarded LaTeX -> sympy parser) and
:mod:`~rewardhub_verifier.math_equivalence` (comparison); this module is the public facade and re-exports
their public names.
"""

from __future__ import annotations

from dataclasses import dataclass

from rewardhub.rewards import Status
from rewardhub_verifier.math_equivalence import MAX_ELEMENTS as MAX_ELEMENTS
from rewardhub_verifier.math_equivalence import _equiv, _quick, answers_equivalent, equivalence
from rewardhub_verifier.math_extract import MAX_ANSWER_CHARS as MAX_ANSWER_CHARS
from rewardhub_verifier.math_extract import _gold_answer, extract_answer, normalize_answer
from rewardhub_verifier.math_sympy import MAX_DIGITS as MAX_DIGITS
from rewardhub_verifier.math_sympy import MAX_NESTING as MAX_NESTING
from rewardhub_verifier.math_sympy import MAX_SYMPY_CHARS as MAX_SYMPY_CHARS

__all__ = [
    "MathVerdict",
    "answers_equivalent",
    "check_answer",
    "equivalence",
    "extract_answer",
    "normalize_answer",
    "quick_check",
]


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
