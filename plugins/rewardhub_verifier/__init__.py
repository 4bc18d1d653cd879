"""The verifier reward plugin: math answers (sympy), code tests (sandboxed) and user-written checkers.

Registers the ``verifier`` reward provider and the ``math`` and ``code`` checkers. The provider runs
``math`` in a process pool with a hard kill, and ``code`` and ``program`` (program-of-thought) in the sandbox
pool; the registered functions are in-process conveniences for other providers and scripts.
"""

from __future__ import annotations

import atexit

from rewardhub import Reward, Status, hookimpl

_sandbox = None


def math_checker(completion: str, row: dict) -> Reward:
    """Final answer of the completion equals the row's ``answer`` (sympy; in-process, no time limit)."""
    from rewardhub_verifier.math_answer import check_answer

    verdict = check_answer(completion, str(row["answer"]))
    return Reward({Status.OK: 1.0, Status.WRONG: 0.1}.get(verdict.status, 0.0), verdict.status, verdict.detail)


def code_checker(completion: str, row: dict) -> Reward:
    """Share of the row's ``tests`` that the completion's code passes (sandboxed)."""
    global _sandbox
    from rewardhub_verifier.sandbox import CodeSandbox

    if _sandbox is None:
        _sandbox = CodeSandbox(workers=1)
        atexit.register(_sandbox.close)
    result = _sandbox.run(completion, row["tests"], entry_point=row.get("entry_point"), fn_name=row.get("fn_name"))
    if result.status is Status.ERROR:
        return Reward.failed(Status.ERROR, result.detail)
    status = result.status if result.status in (Status.OK, Status.NO_ANSWER) else Status.WRONG
    return Reward(result.fraction, status, result.reason)


@hookimpl
def rewardhub_register_rewards(register):
    from rewardhub_verifier.provider import VerifierReward

    register("verifier", VerifierReward, description="programmatic reward: math answers, code tests, custom checks")


@hookimpl
def rewardhub_register_verifiers(register):
    register("math", math_checker, description="final answer equals `answer` (sympy equivalence)")
    register("code", code_checker, description="share of `tests` passed in the sandbox")
