"""The ``verifier`` reward provider: a programmatic reward, the reward source of ReFT.

Each row is checked by one checker, chosen by (in order) the ``checker`` option, the row's ``verifier``
column, or the row's content: ``math`` when it has an ``answer``, ``code`` when it has ``tests``.

- ``math``: the final answer is extracted and compared with sympy in a process pool with a hard kill.
- ``code``: the completion's code runs against the row's tests in the bubblewrap sandbox; partial credit is
  the share of tests passed. Test formats (:mod:`rewardhub_verifier.code_formats`): asserts, HumanEval's
  ``check(candidate)`` with an ``entry_point`` column, input/output pairs (APPS, CodeContests, LiveCodeBench)
  and call-based pairs (``fn_name``). Without bubblewrap code rows are refused (``SandboxUnavailable``) unless
  ``sandbox=unsafe-local`` is given.
- ``program`` (program-of-thought, ReFT's P-CoT): the completion is a Python program; it runs in the same
  sandbox, and its answer (``solution()``'s return value, else its last printed line) is compared with the
  row's ``answer`` by the math equivalence, on the host. Chosen by ``verifier: program`` or ``checker=program``.
- anything else: a registered verifier, a plain function ``(completion, row) -> float | bool | None``
  (from an installed plugin, ``@rewardhub.verifier`` or ``--verifier file.py``).

Reward scheme (ReFT's defaults): ``correct`` (1.0) for a right answer, ``wrong`` (0.1) when an answer was
extracted but is wrong, ``no_answer`` (0.0) when none was found. Code gets partial credit instead:
``correct`` times the share of tests passed. Statuses follow the contract: a math check
that times out is ``timeout`` (masked out of training), but code that loops forever is ``wrong``: the loop
is a property of the completion, and masking it would teach the policy that hanging escapes the penalty.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from rewardhub.plugins import build_registry
from rewardhub.rewards import Reward, RewardProvider, Sample, Status, as_reward

log = logging.getLogger(__name__)
BUILTIN_CHECKERS = ("math", "code", "program")


class VerifierReward(RewardProvider):
    """Programmatic reward: math answers, code tests, or user-written verifiers, chosen per row.

    Args:
        checker: one checker for every row (``math``, ``code``, ``program`` or a registered verifier); default:
            chosen per row (the ``verifier`` column, else ``math`` for an answer, ``code`` for tests).
        answer_column: the row column holding the reference answer (math, program).
        tests_column: the row column holding the code tests.
        verifier_column: the row column naming a row's checker.
        correct: reward for a right answer (code: times the share of tests passed).
        wrong: reward for an answer that was extracted but is wrong.
        no_answer: reward when no answer could be extracted.
        math_timeout_s: seconds per math check before it is killed (status ``timeout``).
        code_timeout_s: seconds per code sample (solution + all its tests) in the sandbox.
        code_memory_mb: address-space limit per code sample.
        workers: sandbox worker processes (one sample each at a time); ~ the cores to use.
        partial_credit: code that fails some tests gets ``correct`` times the share passed (false: 0).
        sandbox: ``bwrap`` (bubblewrap, refused without it), ``auto`` (the same) or ``unsafe-local``
            (no bubblewrap: rlimits and a uid drop only).
        entry_point_column: the row column naming the function HumanEval's ``check(candidate)`` tests.
        fn_name_column: the row column naming the function of call-based input/output tests.
        io_compare: how stdin/stdout tests compare outputs: ``lines`` (trailing spaces and blank lines
            ignored), ``tokens`` (whitespace-split) or ``exact``.
        io_float_tol: numeric tolerance when comparing output tokens (0: exact tokens).
        code_time_limit_s: time limit per input/output test; default ``code_timeout_s``.

    Example:
        >>> v = VerifierReward()
        >>> [r.value for r in v([Sample("2+2=", "4", {"answer": "4"}), Sample("2+2=", "5", {"answer": "4"})])]
        [1.0, 0.1]
        >>> v.close()
    """

    reports_correctness = True

    def __init__(
        self,
        checker: str | None = None,
        answer_column: str = "answer",
        tests_column: str = "tests",
        verifier_column: str = "verifier",
        correct: float = 1.0,
        wrong: float = 0.1,
        no_answer: float = 0.0,
        math_timeout_s: float = 2.0,
        code_timeout_s: float = 5.0,
        code_memory_mb: int = 512,
        workers: int = 2,
        partial_credit: bool = True,
        sandbox: str = "bwrap",
        entry_point_column: str = "entry_point",
        fn_name_column: str = "fn_name",
        io_compare: str = "lines",
        io_float_tol: float = 0.0,
        code_time_limit_s: float | None = None,
    ):
        super().__init__()
        self.checker = checker
        self.answer_column, self.tests_column, self.verifier_column = answer_column, tests_column, verifier_column
        self.values = {Status.OK: correct, Status.WRONG: wrong, Status.NO_ANSWER: no_answer}
        self.math_timeout_s, self.code_timeout_s, self.code_memory_mb = math_timeout_s, code_timeout_s, code_memory_mb
        self.workers = workers
        self.partial_credit = partial_credit
        from rewardhub_verifier.sandbox import BACKENDS

        if sandbox not in BACKENDS:
            raise ValueError(f"verifier: sandbox={sandbox!r}; choose one of {', '.join(BACKENDS)}")
        self.sandbox_backend = sandbox
        self.entry_point_column, self.fn_name_column = entry_point_column, fn_name_column
        self.io_compare, self.io_float_tol = io_compare, float(io_float_tol)
        self.code_time_limit_s = code_time_limit_s
        self.custom: dict[str, Callable] = {n: e.obj for n, e in build_registry().entries["verifier"].items()}
        if checker is not None and checker not in BUILTIN_CHECKERS and checker not in self.custom:
            from rewardhub.errors import UnknownNameError

            raise UnknownNameError(f"verifier: unknown checker {checker!r}; available: "
                                   f"{', '.join([*BUILTIN_CHECKERS, *sorted(self.custom)])}")
        self._math_pool = None
        self._sandbox = None
        self.by_checker: dict[str, int] = {}

    # -- dispatch ----------------------------------------------------------------------------------------

    def checker_for(self, row: dict[str, Any]) -> str | None:
        """The checker for one row (see the module docstring for the order)."""
        if self.checker:
            return self.checker
        chosen = row.get(self.verifier_column)
        if chosen:
            return str(chosen)
        if row.get(self.answer_column) is not None:
            return "math"
        if row.get(self.tests_column) is not None:
            return "code"
        return None

    def score(self, samples: Sequence[Sample]) -> list[Reward]:
        results: list[Reward | None] = [None] * len(samples)
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(samples):
            name = self.checker_for(dict(s.row))
            if name is None:
                results[i] = Reward.failed(
                    Status.ERROR, f"row has neither {self.answer_column!r} nor {self.tests_column!r} (nor a "
                    f"{self.verifier_column!r} column); columns: {sorted(s.row)}")
            else:
                groups.setdefault(name, []).append(i)
        for name, idx in groups.items():
            self.by_checker[name] = self.by_checker.get(name, 0) + len(idx)
            batch = [samples[i] for i in idx]
            if name == "math":
                scored = self._score_math(batch)
            elif name == "code":
                scored = self._score_code(batch)
            elif name == "program":
                scored = self._score_program(batch)
            elif name in self.custom:
                scored = self._score_custom(name, batch)
            else:
                scored = [Reward.failed(Status.ERROR, f"unknown verifier {name!r} named by the row; available: "
                                        f"{', '.join([*BUILTIN_CHECKERS, *sorted(self.custom)])}")] * len(batch)
            for i, r in zip(idx, scored):
                results[i] = r
        return results  # type: ignore[return-value]

    # -- checkers ----------------------------------------------------------------------------------------

    def _score_math(self, batch: list[Sample]) -> list[Reward]:
        if self._math_pool is None:
            from rewardhub_verifier.math_pool import MathCheckPool

            self._math_pool = MathCheckPool(workers=self.workers, timeout_s=self.math_timeout_s)
        verdicts = self._math_pool.check_many([(s.completion, str(s.row[self.answer_column])) for s in batch])
        out = []
        for v in verdicts:
            if v.status.usable:
                out.append(Reward(self.values[v.status], v.status, v.detail or (v.extracted or "")))
            else:
                out.append(Reward.failed(v.status, v.detail))
        return out

    def _code_sandbox(self):
        if self._sandbox is None:
            from rewardhub_verifier.sandbox import CodeSandbox

            self._sandbox = CodeSandbox(workers=self.workers, timeout_s=self.code_timeout_s,
                                        memory_mb=self.code_memory_mb, backend=self.sandbox_backend)
            log.info("code verifier isolation: %s", self._sandbox.isolation)
        return self._sandbox

    def _score_code(self, batch: list[Sample]) -> list[Reward]:
        items = []
        for s in batch:
            spec = {"entry_point": s.row.get(self.entry_point_column), "fn_name": s.row.get(self.fn_name_column),
                    "setup": s.row.get("test_setup_code"), "compare": self.io_compare,
                    "float_tol": self.io_float_tol, "time_limit_s": self.code_time_limit_s}
            items.append((s.completion, s.row.get(self.tests_column), spec))
        results = self._code_sandbox().run_many(items)
        out = []
        for r in results:
            detail = f"{r.reason}: {r.detail}" if r.detail else r.reason
            if r.status is Status.ERROR:  # the sandbox or the row failed, not the completion: mask, never a 0
                out.append(Reward.failed(Status.ERROR, detail))
            elif r.status is Status.OK:
                out.append(Reward(self.values[Status.OK], Status.OK, detail))
            elif r.status is Status.NO_ANSWER:
                out.append(Reward(self.values[Status.NO_ANSWER], Status.NO_ANSWER, detail))
            else:  # wrong, or a solution that timed out: the completion's fault, so it trains
                credit = r.fraction * self.values[Status.OK] if self.partial_credit else 0.0
                out.append(Reward(credit, Status.WRONG, detail))
        return out

    def _score_program(self, batch: list[Sample]) -> list[Reward]:
        """P-CoT: run each program in the sandbox, then compare its answer with the gold one on the host."""
        runs = self._code_sandbox().run_programs([s.completion for s in batch])
        out: list[Reward | None] = [None] * len(batch)
        to_check, where = [], []
        for i, (s, r) in enumerate(zip(batch, runs)):
            if r.status is Status.ERROR:
                out[i] = Reward.failed(Status.ERROR, f"{r.reason}: {r.detail}")
            elif r.answer is None or s.row.get(self.answer_column) is None:
                why = r.detail if r.answer is None else f"row has no {self.answer_column!r}"
                out[i] = (Reward(self.values[Status.NO_ANSWER], Status.NO_ANSWER, why) if r.answer is None
                          else Reward.failed(Status.ERROR, why))
            else:
                # Boxed, so the extractor takes the program's answer whole (not, say, the last number of "3/4").
                to_check.append((f"\\boxed{{{r.answer}}}", str(s.row[self.answer_column])))
                where.append((i, r.answer))
        if to_check:
            if self._math_pool is None:
                from rewardhub_verifier.math_pool import MathCheckPool

                self._math_pool = MathCheckPool(workers=self.workers, timeout_s=self.math_timeout_s)
            for (i, answer), v in zip(where, self._math_pool.check_many(to_check)):
                detail = f"program answered {answer[:200]!r}: {v.detail}"
                if v.status in (Status.OK, Status.WRONG):
                    out[i] = Reward(self.values[v.status], v.status, detail)
                elif v.status is Status.NO_ANSWER:
                    out[i] = Reward(self.values[Status.WRONG], Status.WRONG, detail)
                else:
                    out[i] = Reward.failed(v.status, v.detail)
        return out  # type: ignore[return-value]

    def _score_custom(self, name: str, batch: list[Sample]) -> list[Reward]:
        fn = self.custom[name]
        out = []
        for s in batch:
            try:
                result = fn(s.completion, dict(s.row))
                reward = as_reward(result, f"verifier {name!r}")
                below_correct = reward.status is Status.OK and reward.value < self.values[Status.OK]
                if below_correct and not isinstance(result, Reward):
                    # a plain score below the `correct` value is a graded miss, not a correct answer
                    reward = Reward(reward.value, Status.WRONG, reward.detail)
                out.append(reward)
            except Exception as exc:
                out.append(Reward.failed(Status.ERROR, f"verifier {name!r} raised {type(exc).__name__}: {exc}"))
        return out

    # -- lifecycle ---------------------------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        merged = super().metrics()
        merged.update({f"checker/{k}": float(v) for k, v in self.by_checker.items()})
        if self._math_pool is not None:
            merged.update({f"math/{k}": float(v) for k, v in self._math_pool.stats.as_dict().items()})
        return merged

    @property
    def isolation(self) -> str | None:
        """The code sandbox's isolation level, once code has been checked (None before)."""
        return None if self._sandbox is None else self._sandbox.isolation

    def close(self) -> None:
        for resource in (self._math_pool, self._sandbox):
            if resource is not None:
                resource.close()
        self._math_pool = self._sandbox = None
