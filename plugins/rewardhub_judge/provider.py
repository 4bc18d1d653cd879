"""The ``judge`` reward provider: RLAIF, a reward from an LLM judge behind an OpenAI-compatible API.

Each completion is shown to the judge with its prompt (and the row's reference answer, when there is one)
and the judge's ``SCORE: n`` on the ``min_score``-``max_score`` scale is reported normalised to [0, 1], so
KL coefficients tuned for one scale carry over to another. Pairwise :meth:`JudgeReward.compare` asks
"A or B?" in both orders and averages, which cancels the judge's position bias (the order that a biased
judge always picks wins once each way: 0.5).

Failures are statuses, never a silent 0: a timeout is ``timeout``; a refused connection, an HTTP error after
the client's retries, or a reply with no readable score is ``error`` (the judge's failure, not the policy's),
with the reply quoted in the detail. The loop masks them out of the update.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from rewardhub.errors import ConfigError, RewardhubError, RewardProviderError
from rewardhub.rewards import Reward, RewardProvider, Sample, Status
from rewardhub_judge.client import JudgeClient, JudgeFailure, Reply
from rewardhub_judge.parsing import VerdictError, parse_score, parse_verdict
from rewardhub_judge.prompts import (
    PAIRWISE_FIELDS,
    PAIRWISE_TEMPLATE,
    POINTWISE_FIELDS,
    POINTWISE_TEMPLATE,
    load_template,
    prompt_text,
    reference_text,
    render,
)

#: Judgements kept per run (least recently used dropped first); ~100 bytes each.
CACHE_SIZE = 100_000
DUMMY_API_KEY = "sk-local"


class JudgeReward(RewardProvider):
    """Reward from an LLM judge over an OpenAI-compatible API (``rewardhub serve``, vLLM, a hosted model).

    Args:
        base_url: the endpoint, e.g. ``http://127.0.0.1:8000/v1``; default ``$OPENAI_BASE_URL``.
        model: the judge model's name; default: the only model the endpoint lists.
        api_key: default ``$OPENAI_API_KEY``, else a dummy key (local servers ignore it).
        rubric: extra criteria for the built-in templates (replaces "helpfulness, correctness, ...").
        template: a pointwise template file (or inline string) with ``{completion}`` and any of ``{prompt}``,
            ``{reference}``, ``{rubric}``, ``{min_score}``, ``{max_score}``; it must ask for ``SCORE: n``.
        pairwise_template: the same for :meth:`compare`, with ``{a}`` and ``{b}``; it must ask for ``WINNER: A|B|TIE``.
        min_score, max_score: the judge's scale; the reward is ``(score - min_score) / (max_score - min_score)``.
        temperature: judge sampling temperature (0: the same pair always gets the same judgement).
        max_tokens: longest judge reply; too short and the explanation crowds out the score.
        concurrency: most requests in flight.
        timeout: seconds per attempt before status ``timeout``.
        max_retries: retries of 429/5xx, timeouts and connection errors (the OpenAI client's, with backoff).
        cache: judge each identical (prompt, completion, reference) once per run; failures are not cached.
        reference_columns: row columns holding a reference answer, first non-empty wins.
    """

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 rubric: str = "", template: str | None = None, pairwise_template: str | None = None,
                 min_score: float = 1.0, max_score: float = 10.0, temperature: float = 0.0, max_tokens: int = 512,
                 concurrency: int = 8, timeout: float = 60.0, max_retries: int = 2, cache: bool = True,
                 reference_columns: tuple[str, ...] = ("reference", "answer")):
        super().__init__()
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        _check_options(base_url, min_score, max_score, temperature, max_tokens, concurrency, timeout, max_retries)
        self.template, self._builtin = load_template(template, POINTWISE_TEMPLATE, POINTWISE_FIELDS,
                                                     ("completion",), "template")
        self.pairwise_template, self._pair_builtin = load_template(
            pairwise_template, PAIRWISE_TEMPLATE, PAIRWISE_FIELDS, ("a", "b"), "pairwise_template")
        self.base_url, self.rubric = base_url.rstrip("/"), rubric
        self.min_score, self.max_score = float(min_score), float(max_score)
        self.temperature, self.max_tokens, self.cache = temperature, max_tokens, cache
        self.reference_columns = tuple(reference_columns)
        self.client = JudgeClient(self.base_url, api_key or os.environ.get("OPENAI_API_KEY") or DUMMY_API_KEY,
                                  timeout, max_retries, concurrency)
        self._cache: OrderedDict[bytes, Any] = OrderedDict()
        self.cache_hits = 0
        self.parse_failures = 0
        try:
            self.model = model or self._discover_model()
        except BaseException:
            self.client.close()
            raise

    # -- pointwise --------------------------------------------------------------------------------------------

    def score(self, samples: Sequence[Sample]) -> list[Reward]:
        return self.client.run(self._score_async(samples))

    async def _score_async(self, samples: Sequence[Sample]) -> list[Reward]:
        """Score a batch concurrently; identical samples (and cached ones) cost one request."""
        messages = [self._pointwise_message(s) for s in samples]
        if not self.cache:
            return list(await asyncio.gather(*(self._judge(m) for m in messages)))
        keys = [_digest("score", m) for m in messages]
        todo: dict[bytes, str] = {}
        for key, message in zip(keys, messages):
            if key in self._cache or key in todo:
                self.cache_hits += 1
            else:
                todo[key] = message
        fresh = dict(zip(todo, await asyncio.gather(*(self._judge(m) for m in todo.values()))))
        for key, reward in fresh.items():
            if reward.usable:  # a failure is asked again next time
                self._remember(key, reward)
        return [fresh[key] if key in fresh else self._cached(key) for key in keys]

    def _pointwise_message(self, sample: Sample) -> str:
        return render(self.template, self._builtin, {
            "prompt": prompt_text(sample.prompt, sample.row), "completion": sample.completion,
            "reference": reference_text(sample.row, self.reference_columns), "rubric": self.rubric,
            "min_score": f"{self.min_score:g}", "max_score": f"{self.max_score:g}"})

    async def _judge(self, message: str) -> Reward:
        try:
            reply = await self._ask(message)
            raw = parse_score(reply.text, self.min_score, self.max_score)
        except JudgeFailure as failure:
            return Reward.failed(failure.status, failure.detail)
        except VerdictError as exc:
            self.parse_failures += 1
            return Reward.failed(Status.ERROR, _with_length_hint(str(exc), reply))
        value = (raw - self.min_score) / (self.max_score - self.min_score)
        return Reward(value, Status.OK, f"judge score {raw:g} on {self.min_score:g}-{self.max_score:g}")

    async def _ask(self, message: str) -> Reply:
        return await self.client.chat(self.model, [{"role": "user", "content": message}],
                                      self.temperature, self.max_tokens)

    # -- pairwise ---------------------------------------------------------------------------------------------

    def compare(self, prompt: str, a: str, b: str, row: Mapping[str, Any] | None = None) -> float:
        """P(``a`` beats ``b``): the mean over both orders of 1 (win), 0.5 (tie) or 0 (loss).

        Raises:
            RewardProviderError: when either order fails or has no verdict (online DPO skips the pair).
        """
        return self.client.run(self._compare_async(prompt, a, b, row))

    async def _compare_async(self, prompt: str, a: str, b: str, row: Mapping[str, Any] | None = None) -> float:
        row = row or {}
        values = {"prompt": prompt_text(prompt, row), "reference": reference_text(row, self.reference_columns),
                  "rubric": self.rubric}
        first = render(self.pairwise_template, self._pair_builtin, {**values, "a": a, "b": b})
        second = render(self.pairwise_template, self._pair_builtin, {**values, "a": b, "b": a})
        key = _digest("compare", first)
        if self.cache and key in self._cache:
            self.cache_hits += 1
            return self._cached(key)
        verdicts = await asyncio.gather(self._verdict(first), self._verdict(second), return_exceptions=True)
        for verdict in verdicts:
            if isinstance(verdict, BaseException):
                raise verdict
        win_a = {"A": 1.0, "tie": 0.5, "B": 0.0}
        p = (win_a[verdicts[0]] + (1.0 - win_a[verdicts[1]])) / 2.0
        if self.cache:
            self._remember(key, p)
        return p

    async def _verdict(self, message: str) -> str:
        try:
            reply = await self._ask(message)
            return parse_verdict(reply.text)
        except JudgeFailure as failure:
            raise RewardProviderError(f"judge comparison failed ({failure.status.value}): {failure.detail}") from None
        except VerdictError as exc:
            self.parse_failures += 1
            raise RewardProviderError(f"judge comparison failed: {_with_length_hint(str(exc), reply)}") from None

    # -- bookkeeping ------------------------------------------------------------------------------------------

    def _cached(self, key: bytes) -> Any:
        self._cache.move_to_end(key)
        return self._cache[key]

    def _remember(self, key: bytes, value: Any) -> None:
        self._cache[key] = value
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    def _discover_model(self) -> str:
        """The endpoint's only model, so ``--reward-arg model=`` can be left out for single-model servers."""
        try:
            models = self.client.run(self.client.list_models())
        except JudgeFailure as failure:
            raise RewardhubError(f"judge: could not list the models at {self.base_url} to pick the judge model: "
                                 f"{failure.detail}. Start the server, fix --reward-arg base_url, or name the model "
                                 "with --reward-arg model=NAME") from None
        if len(models) != 1:
            listed = ", ".join(models[:20]) or "none"
            raise ConfigError(f"judge: {self.base_url} serves {len(models)} models ({listed}); choose one with "
                              "--reward-arg model=NAME")
        return models[0]

    def metrics(self) -> dict[str, float]:
        stats = self.client.stats
        m = super().metrics()
        m.update({"judge/requests": float(stats.requests), "judge/cache_hits": float(self.cache_hits),
                  "judge/parse_failures": float(self.parse_failures), "judge/timeouts": float(stats.timeouts),
                  "judge/errors": float(stats.errors), "judge/latency_mean_s": stats.latency_mean_s,
                  "judge/max_in_flight": float(stats.max_in_flight),
                  "judge/prompt_tokens": float(stats.prompt_tokens),
                  "judge/completion_tokens": float(stats.completion_tokens)})
        return m

    def close(self) -> None:
        self.client.close()


def _check_options(base_url: str | None, min_score: float, max_score: float, temperature: float, max_tokens: int,
                   concurrency: int, timeout: float, max_retries: int) -> None:
    problems = []
    if not base_url:
        problems.append("judge: no judge endpoint; pass --reward-arg base_url=http://host:port/v1 (e.g. a "
                        "`rewardhub serve` or vLLM server) or set OPENAI_BASE_URL")
    elif not base_url.startswith(("http://", "https://")):
        problems.append(f"judge: base_url={base_url!r} must start with http:// or https://, e.g. "
                        "--reward-arg base_url=http://127.0.0.1:8000/v1")
    if not min_score < max_score:
        problems.append(f"judge: min_score ({min_score:g}) must be below max_score ({max_score:g}), e.g. "
                        "--reward-arg min_score=1 --reward-arg max_score=10")
    if temperature < 0:
        problems.append(f"judge: temperature must be >= 0, got {temperature:g}")
    if max_tokens < 1:
        problems.append(f"judge: max_tokens must be >= 1, got {max_tokens}")
    if concurrency < 1:
        problems.append(f"judge: concurrency must be >= 1, got {concurrency}")
    if not timeout > 0:
        problems.append(f"judge: timeout must be > 0 seconds, got {timeout:g}")
    if max_retries < 0:
        problems.append(f"judge: max_retries must be >= 0, got {max_retries}")
    if problems:
        raise ConfigError(problems, header="invalid options for reward 'judge'")


def _digest(kind: str, message: str) -> bytes:
    return hashlib.sha256(f"{kind}\0{message}".encode("utf-8", "surrogatepass")).digest()


def _with_length_hint(detail: str, reply: Reply | None) -> str:
    if reply is not None and reply.finish_reason == "length":
        return f"{detail} (the reply hit max_tokens; raise --reward-arg max_tokens)"
    return detail
