"""The test formats code-RL datasets bring, read into one :class:`TestSpec` the sandbox can run.

* **asserts** (MBPP's ``test_list``, this project's ``tests``): a list of statements, each one test, run in
  the test process against the solution's names; a single string is one test. MBPP's ``test_setup_code``
  goes in ``setup``.
* **check** (HumanEval): the test code defines ``check(candidate)``; with an ``entry_point`` it is called with
  the solution's function of that name. One test.
* **io** (APPS, CodeContests, LiveCodeBench stdin): input/output pairs, as a list of ``{"input", "output"}``
  dicts (``stdin``/``stdout`` also accepted), or a dict of parallel lists (``{"inputs": [...], "outputs":
  [...]}`` as APPS, ``{"input": [...], "output": [...]}`` as CodeContests), or that as a JSON string (APPS's
  ``input_output`` column). The program runs once per pair with that stdin, under a per-test time limit;
  stdout is compared after normalising whitespace (see :func:`outputs_match`).
* **fncall** (APPS/LiveCodeBench call-based): the same pairs with a function name (``fn_name`` in the dict,
  or the ``fn_name`` argument): ``fn(*inputs) == output`` per pair, compared in the test process. A name not
  defined at top level is looked up as a method of a fresh ``Solution()`` (LeetCode style). LiveCodeBench's
  ``{"testtype": "functional"}`` pairs hold one JSON value per input line.

Partial credit is always the share of tests passed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TestSpec", "parse_tests"]


@dataclass(frozen=True)
class TestSpec:
    """What to run and how to judge it: ``kind`` is ``asserts``, ``check``, ``fncall`` or ``io``."""

    kind: str
    tests: tuple[str, ...] = ()
    cases: tuple[tuple[Any, Any], ...] = ()
    entry_point: str | None = None
    fn_name: str | None = None
    setup: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.cases) if self.kind in ("io", "fncall") else len(self.tests)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):  # some APPS rows give stdin as a list of lines
        return "\n".join(str(v) for v in value) + "\n"
    return str(value)


def _lcb_args(text: str) -> list[Any]:
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def _from_pairs(pairs: Sequence[Mapping[str, Any]], fn_name: str | None) -> TestSpec:
    cases = []
    functional = False
    for p in pairs:
        if "input" in p:
            inp, out = p["input"], p.get("output", "")
        elif "stdin" in p:
            inp, out = p["stdin"], p.get("stdout", "")
        else:
            raise ValueError(f"an input/output test needs 'input' and 'output' keys, got {sorted(p)}")
        if p.get("testtype") == "functional":
            functional = True
            cases.append((_lcb_args(_text(inp)), json.loads(_text(out))))
        else:
            cases.append((_text(inp), _text(out)))
    if functional:
        if not fn_name:
            raise ValueError("functional (call-based) tests need a function name (fn_name / entry_point)")
        return TestSpec("fncall", cases=tuple(cases), fn_name=fn_name)
    return TestSpec("io", cases=tuple(cases))


def _from_mapping(d: Mapping[str, Any], entry_point: str | None, fn_name: str | None, setup: str) -> TestSpec:
    fn_name = d.get("fn_name") or fn_name
    for ins, outs in (("inputs", "outputs"), ("input", "output")):
        if ins in d and outs in d and isinstance(d[ins], list):
            if len(d[ins]) != len(d[outs]):
                raise ValueError(f"{ins!r} and {outs!r} differ in length")
            if fn_name:
                cases = [(i if isinstance(i, list) else [i], o) for i, o in zip(d[ins], d[outs])]
                return TestSpec("fncall", cases=tuple(cases), fn_name=str(fn_name))
            return TestSpec("io", cases=tuple((_text(i), _text(o)) for i, o in zip(d[ins], d[outs])))
    if "test" in d:  # HumanEval-style packaging: {"test": "...def check(candidate)...", "entry_point": "f"}
        return parse_tests(d["test"], entry_point=d.get("entry_point") or entry_point, setup=setup)
    raise ValueError(f"unrecognised test dict with keys {sorted(d)}")


def parse_tests(tests: Any, *, entry_point: str | None = None, fn_name: str | None = None,
                setup: str | None = None) -> TestSpec:
    """Read a row's tests (any format above) into a :class:`TestSpec`; raises ValueError on what it cannot read.

    No tests at all (None, empty string, empty list) gives one trivial assert: the solution running to
    completion is the one test (the old behaviour of this verifier).
    """
    setup = setup or ""
    if isinstance(tests, TestSpec):
        return tests
    if tests is None:
        return TestSpec("asserts", tests=("pass",), setup=setup)
    if isinstance(tests, str):
        stripped = tests.strip()
        if stripped[:1] in ("{", "["):
            try:
                parsed = json.loads(stripped)
            except ValueError:
                parsed = None
            if isinstance(parsed, (dict, list)):
                return parse_tests(parsed, entry_point=entry_point, fn_name=fn_name, setup=setup)
        if not stripped:
            return TestSpec("asserts", tests=("pass",), setup=setup)
        if entry_point and "def check(" in tests:
            return TestSpec("check", tests=(tests,), entry_point=entry_point, setup=setup)
        return TestSpec("asserts", tests=(tests,), entry_point=entry_point, setup=setup)
    if isinstance(tests, Mapping):
        return _from_mapping(tests, entry_point, fn_name, setup)
    if isinstance(tests, Sequence):
        items = list(tests)
        if not items:
            return TestSpec("asserts", tests=("pass",), setup=setup)
        if all(isinstance(t, Mapping) for t in items):
            return _from_pairs(items, fn_name or entry_point)
        if all(isinstance(t, str) for t in items):
            if entry_point and len(items) == 1 and "def check(" in items[0]:
                return TestSpec("check", tests=(items[0],), entry_point=entry_point, setup=setup)
            return TestSpec("asserts", tests=tuple(items), entry_point=entry_point, setup=setup)
    raise ValueError(f"unrecognised tests of type {type(tests).__name__}")
