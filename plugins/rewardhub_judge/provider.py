"""The ``judge`` reward provider: RLAIF, a reward from an LLM judge behind an OpenAI-compatible API.

Each completion is shown to the judge with its prompt (and the row's reference answer, when there is one)
and the judge's ``SCORE: n`` on the ``min_score``-``max_score`` scale is reported normalised to [0, 1], so
KL coefficients tuned for one scale carry over to another. Pairwise :meth:`JudgeReward.compare` asks
"A or B?" in both orders and averages, which cancels the judge's position bias (the order that a biased
judge always picks wins once each way: 0.5).

``mode="groupwise"`` ranks each run of consecutive samples with the same prompt (GRPO's generations) in one
request, one ``SCORE k: n`` per completion; a missing score fails that completion only.

Every untrusted text (prompt, completion, reference) reaches the judge inside a nonce-tagged block that it
cannot close (:mod:`rewardhub_judge.prompts`), and the verdict is read from the judge's own words only
(:mod:`rewardhub_judge.parsing`). Load control (rpm/tpm buckets, AIMD concurrency, timeouts that close
the request) is in :mod:`rewardhub_judge.client` and :mod:`rewardhub_judge.limits`.

Failures are statuses, never a silent 0: a timeout is ``timeout``; a refused connection, an HTTP error after
the retries, or a reply with no readable score is ``error`` (the judge's failure, not the policy's),
with the reply quoted in the detail. The loop masks them out of the update.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from rewardhub.errors import ConfigError, RewardhubError, RewardProviderError
from rewardhub.rewards import Reward, RewardProvider, Sample, Status
from rewardhub_judge.client import JudgeClient, JudgeFailure, Reply
from rewardhub_judge.parsing import VerdictError, parse_group_scores, parse_score, parse_verdict
from rewardhub_judge.prompts import (
    GROUPWISE_FIELDS,
    GROUPWISE_TEMPLATE,
    PAIRWISE_FIELDS,
    PAIRWISE_TEMPLATE,
    POINTWISE_FIELDS,
    POINTWISE_TEMPLATE,
    Rendered,
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
        template: a pointwise template file (or inline string) with ``{data_notice}``, ``{completion}`` and any
            of ``{prompt}``, ``{reference}``, ``{rubric}``, ``{min_score}``, ``{max_score}`` (the untrusted ones
            written bare: each becomes a protected block); it must ask for ``SCORE: n``.
        pairwise_template: the same for :meth:`compare`, with ``{a}`` and ``{b}``; it must ask for ``WINNER: A|B|TIE``.
        groupwise_template: the same for ``mode="groupwise"``, with ``{responses}`` (the numbered blocks) and
            any of ``{count}``, ``{score_lines}``; it must ask for ``SCORE k: n`` lines.
        min_score, max_score: the judge's scale; the reward is ``(score - min_score) / (max_score - min_score)``.
        temperature: judge sampling temperature (0: the same pair always gets the same judgement).
        max_tokens: longest judge reply; too short and the explanation crowds out the score.
        concurrency: most requests in flight (the ceiling of the adaptive limit).
        adaptive: AIMD concurrency between 1 and ``concurrency`` (halve on 429/5xx/timeout, +1 after a window
            of successes); False keeps ``concurrency`` fixed.
        rpm, tpm: requests and tokens per minute sent to the judge (0 or None: no limit); tokens are estimated
            as prompt characters / 4 + ``max_tokens`` and corrected by the reply's ``usage``.
        timeout: seconds per attempt before the request is cancelled (its connection closed): status ``timeout``.
        max_retries: retries of 429/5xx, timeouts and connection errors, with backoff and Retry-After.
        mode: ``pointwise`` (one request per completion) or ``groupwise`` (consecutive samples with the same
            prompt, as GRPO lays out its generations, are ranked in one request with one ``SCORE k: n`` each).
        max_group: most completions in one groupwise request (a longer run is split).
        cache: judge each identical (prompt, completion, reference) once per run; failures are not cached.
        reference_columns: row columns holding a reference answer, first non-empty wins.
    """

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 rubric: str = "", template: str | None = None, pairwise_template: str | None = None,
                 groupwise_template: str | None = None,
                 min_score: float = 1.0, max_score: float = 10.0, temperature: float = 0.0, max_tokens: int = 512,
                 concurrency: int = 8, adaptive: bool = True, rpm: float | None = None, tpm: float | None = None,
                 timeout: float = 60.0, max_retries: int = 2, mode: Literal["pointwise", "groupwise"] = "pointwise",
                 max_group: int = 16, cache: bool = True,
                 reference_columns: tuple[str, ...] = ("reference", "answer")):
        super().__init__()
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        _check_options(base_url, min_score, max_score, temperature, max_tokens, concurrency, timeout, max_retries,
                       rpm, tpm, mode, max_group)
        self.template, self._builtin = load_template(template, POINTWISE_TEMPLATE, POINTWISE_FIELDS,
                                                     ("completion",), "template")
        self.pairwise_template, self._pair_builtin = load_template(
            pairwise_template, PAIRWISE_TEMPLATE, PAIRWISE_FIELDS, ("a", "b"), "pairwise_template")
        self.groupwise_template, self._group_builtin = load_template(
            groupwise_template, GROUPWISE_TEMPLATE, GROUPWISE_FIELDS, ("responses",), "groupwise_template")
        self.base_url, self.rubric = base_url.rstrip("/"), rubric
        self.min_score, self.max_score = float(min_score), float(max_score)
        self.temperature, self.max_tokens, self.cache = temperature, max_tokens, cache
        self.mode, self.max_group = mode, max_group
        self.reference_columns = tuple(reference_columns)
        self.client = JudgeClient(self.base_url, api_key or os.environ.get("OPENAI_API_KEY") or DUMMY_API_KEY,
                                  timeout, max_retries, concurrency, adaptive=adaptive, rpm=rpm, tpm=tpm)
        self._cache: OrderedDict[bytes, Any] = OrderedDict()
        self.cache_hits = 0
        self.parse_failures = 0
        self.groups = 0
        try:
            self.model = model or self._discover_model()
        except BaseException:
            self.client.close()
            raise

    # -- pointwise --------------------------------------------------------------------------------------------

    def score(self, samples: Sequence[Sample]) -> list[Reward]:
        if self.mode == "groupwise":
            return self.client.run(self._score_groups(samples))
        return self.client.run(self._score_async(samples))

    async def _score_async(self, samples: Sequence[Sample]) -> list[Reward]:
        """Score a batch concurrently; identical samples (and cached ones) cost one request."""
        values = [self._values(s) for s in samples]
        if not self.cache:
            return list(await asyncio.gather(*(self._judge(v) for v in values)))
        keys = [_digest("score", v) for v in values]
        todo: dict[bytes, dict[str, str]] = {}
        for key, value in zip(keys, values):
            if key in self._cache or key in todo:
                self.cache_hits += 1
            else:
                todo[key] = value
        fresh = dict(zip(todo, await asyncio.gather(*(self._judge(v) for v in todo.values()))))
        for key, reward in fresh.items():
            if reward.usable:  # a failure is asked again next time
                self._remember(key, reward)
        return [fresh[key] if key in fresh else self._cached(key) for key in keys]

    def _values(self, sample: Sample) -> dict[str, str]:
        """The raw texts of one sample, and the scale; :func:`render` wraps the untrusted ones."""
        return {"prompt": prompt_text(sample.prompt, sample.row), "completion": sample.completion,
                "reference": reference_text(sample.row, self.reference_columns), "rubric": self.rubric,
                "min_score": f"{self.min_score:g}", "max_score": f"{self.max_score:g}"}

    async def _judge(self, values: dict[str, str]) -> Reward:
        rendered = render(self.template, self._builtin, values)
        reply = None
        try:
            reply = await self._ask(rendered.text)
            raw = parse_score(reply.text, self.min_score, self.max_score, rendered.nonce)
        except JudgeFailure as failure:
            return Reward.failed(failure.status, failure.detail)
        except VerdictError as exc:
            self.parse_failures += 1
            return Reward.failed(Status.ERROR, _with_length_hint(str(exc), reply))
        return self._reward(raw)

    def _reward(self, raw: float, where: str = "") -> Reward:
        value = (raw - self.min_score) / (self.max_score - self.min_score)
        return Reward(value, Status.OK, f"judge score {raw:g} on {self.min_score:g}-{self.max_score:g}{where}")

    async def _ask(self, message: str) -> Reply:
        return await self.client.chat(self.model, [{"role": "user", "content": message}],
                                      self.temperature, self.max_tokens)

    # -- groupwise --------------------------------------------------------------------------------------------

    async def _score_groups(self, samples: Sequence[Sample]) -> list[Reward]:
        """Rank each run of consecutive samples with the same prompt (and reference) in one request.

        A run longer than ``max_group`` is split; a run of one is judged pointwise. A reply that lacks some
        ``SCORE k: n`` lines fails those samples only (status ``error``, masked); a failed request fails its group.
        """
        values = [self._values(s) for s in samples]
        results: list[Reward | None] = [None] * len(samples)
        groups = _consecutive_groups(values, self.max_group)
        singles = [g[0] for g in groups if len(g) == 1]

        async def singles_job() -> None:
            if singles:
                rewards = await self._score_async([samples[i] for i in singles])
                for i, reward in zip(singles, rewards):
                    results[i] = reward

        async def group_job(indices: list[int]) -> None:
            for i, reward in zip(indices, await self._judge_group([values[i] for i in indices])):
                results[i] = reward

        await asyncio.gather(singles_job(), *(group_job(g) for g in groups if len(g) > 1))
        return [r if r is not None else Reward.failed(Status.ERROR, "judge: not scored") for r in results]

    async def _judge_group(self, values: list[dict[str, str]]) -> list[Reward]:
        completions = [v["completion"] for v in values]
        first = {k: v for k, v in values[0].items() if k != "completion"}
        key = _digest("group", {**first, "responses": completions})
        if self.cache and key in self._cache:
            self.cache_hits += len(values)
            return self._cached(key)
        rendered = render(self.groupwise_template, self._group_builtin, {**first, "responses": completions})
        self.groups += 1
        n = len(completions)
        reply = None
        try:
            reply = await self._ask(rendered.text)
        except JudgeFailure as failure:
            return [Reward.failed(failure.status, f"{failure.detail} (groupwise request for {n} responses)")] * n
        rewards = []
        for k, raw in enumerate(parse_group_scores(reply.text, n, self.min_score, self.max_score, rendered.nonce), 1):
            if isinstance(raw, VerdictError):
                self.parse_failures += 1
                rewards.append(Reward.failed(Status.ERROR, _with_length_hint(str(raw), reply)))
            else:
                rewards.append(self._reward(raw, f" (response {k} of {n}, groupwise)"))
        if self.cache and all(r.usable for r in rewards):
            self._remember(key, rewards)
        return rewards

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
        key = _digest("compare", {**values, "a": a, "b": b})
        if self.cache and key in self._cache:
            self.cache_hits += 1
            return self._cached(key)
        first = render(self.pairwise_template, self._pair_builtin, {**values, "a": a, "b": b})
        second = render(self.pairwise_template, self._pair_builtin, {**values, "a": b, "b": a})
        verdicts = await asyncio.gather(self._verdict(first), self._verdict(second), return_exceptions=True)
        for verdict in verdicts:
            if isinstance(verdict, BaseException):
                raise verdict
        win_a = {"A": 1.0, "tie": 0.5, "B": 0.0}
        p = (win_a[verdicts[0]] + (1.0 - win_a[verdicts[1]])) / 2.0
        if self.cache:
            self._remember(key, p)
        return p

    async def _verdict(self, rendered: Rendered) -> str:
        reply = None
        try:
            reply = await self._ask(rendered.text)
            return parse_verdict(reply.text, rendered.nonce)
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
        """Counters for ``metrics.jsonl`` (``provider/judge/...``), load control included.

        ``cancelled``: attempts abandoned at the timeout, their connections closed; ``concurrency_limit``: the
        AIMD limit now; ``concurrency_decreases``: how often it was halved; ``throttled_waits`` and
        ``throttled_s``: attempts that waited for the rpm/tpm budget, and how long in all; ``rate_limited``:
        HTTP 429 answers; ``attempts`` and ``retries``: HTTP requests sent, and how many were retries.
        """
        client = self.client
        stats, limiter = client.stats, client.limiter.stats
        m = super().metrics()
        m.update({"judge/requests": float(stats.requests), "judge/cache_hits": float(self.cache_hits),
                  "judge/parse_failures": float(self.parse_failures), "judge/timeouts": float(stats.timeouts),
                  "judge/errors": float(stats.errors), "judge/latency_mean_s": stats.latency_mean_s,
                  "judge/max_in_flight": float(stats.max_in_flight),
                  "judge/prompt_tokens": float(stats.prompt_tokens),
                  "judge/completion_tokens": float(stats.completion_tokens),
                  "judge/attempts": float(stats.attempts), "judge/retries": float(stats.retries),
                  "judge/cancelled": float(stats.cancelled), "judge/rate_limited": float(stats.rate_limited),
                  "judge/concurrency_limit": float(client.aimd.limit),
                  "judge/concurrency_decreases": float(client.aimd.decreases),
                  "judge/throttled_waits": float(limiter.throttled_waits),
                  "judge/throttled_s": limiter.throttled_s})
        if self.mode == "groupwise":
            m["judge/groups"] = float(self.groups)
        return m

    def close(self) -> None:
        self.client.close()


def _check_options(base_url: str | None, min_score: float, max_score: float, temperature: float, max_tokens: int,
                   concurrency: int, timeout: float, max_retries: int, rpm: float | None, tpm: float | None,
                   mode: str, max_group: int) -> None:
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
    for name, rate in (("rpm", rpm), ("tpm", tpm)):
        if rate is not None and not rate >= 0:
            problems.append(f"judge: {name} must be >= 0 (0: no limit), got {rate:g}")
    if mode not in ("pointwise", "groupwise"):
        problems.append(f"judge: mode must be 'pointwise' or 'groupwise', got {mode!r}")
    if max_group < 2:
        problems.append(f"judge: max_group must be >= 2, got {max_group}")
    if problems:
        raise ConfigError(problems, header="invalid options for reward 'judge'")


def _digest(kind: str, values: Mapping[str, Any]) -> bytes:
    """The cache key of a judgement: the raw texts and the scale, not the rendered prompt (its nonce is random)."""
    text = json.dumps([kind, sorted(values.items())], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _consecutive_groups(values: Sequence[Mapping[str, str]], limit: int) -> list[list[int]]:
    """Indices of runs of consecutive samples with the same prompt and reference, each at most ``limit`` long."""
    groups: list[list[int]] = []
    for i, v in enumerate(values):
        last = groups[-1] if groups else None
        if last and len(last) < limit and (values[last[0]]["prompt"], values[last[0]]["reference"]) == \
                (v["prompt"], v["reference"]):
            last.append(i)
        else:
            groups.append([i])
    return groups


def _with_length_hint(detail: str, reply: Reply | None) -> str:
    if reply is not None and reply.finish_reason == "length":
        return f"{detail} (the reply hit max_tokens; raise --reward-arg max_tokens)"
    return detail
