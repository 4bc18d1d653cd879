"""The ``judge`` reward (RLAIF) and ``rewardhub serve``.

A scripted OpenAI-compatible server, defined here, stands for the external judge: its replies are computed
from the request (the score is the number of 7s in the judged response), and the requested model name picks a
failure mode (503s, delays, garbage, a position-biased pairwise judge). The real server is then exercised on
the tiny random model, and one short GRPO run trains against the scripted judge through the CLI.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from rewardhub.cli.main import main
from rewardhub.errors import ConfigError, RewardhubError, RewardProviderError
from rewardhub.reward_resolution import build_reward
from rewardhub.rewards import Sample, Status
from rewardhub.testing import check_provider
from rewardhub_judge.parsing import VerdictError, parse_score, parse_verdict
from rewardhub_judge.provider import JudgeReward
from rewardhub_judge.server import ServerThread, create_app, load_local_model

# -------------------------------------------------------------------------------------------------------------
# Parsing
# -------------------------------------------------------------------------------------------------------------

SCORES = [
    ("SCORE: 7", 7.0),
    ("Good answer.\nScore: 7/10", 7.0),
    ("**Score:** 7.5", 7.5),
    ("Rating: [[8]]", 8.0),
    ("- **Final score**: 9", 9.0),
    ("score = 4", 4.0),
    ("SCORE: 3\nOn reflection, the proof is complete.\nSCORE: 6", 6.0),  # last line wins
    ("SCORE: 8\nA score of 10 would need a proof.", 8.0),  # a line-start SCORE beats a mention in prose
    ("I would give it a score of 6 out of 10.", 6.0),  # no line-start form: the keyword anywhere
    ("My rating is 2.", 2.0),
    ("score: 10", 10.0),
    ("Score: 1", 1.0),
]
BAD_SCORES = [
    ("", "no score"),
    ("The response is great, I'd say 9.", "no score"),
    ("SCORE: n", "no score"),
    ("SCORE: eight", "no score"),
    ("SCORE: 11", "outside the scale 1-10"),
    ("SCORE: 0", "outside the scale 1-10"),
    ("SCORE: -3", "outside the scale 1-10"),
    ("Score: 4/5", "but the scale is 1-10"),
]


@pytest.mark.parametrize(("reply", "expected"), SCORES)
def test_parse_score_reads_the_usual_formats(reply, expected):
    assert parse_score(reply, 1, 10) == expected


@pytest.mark.parametrize(("reply", "why"), BAD_SCORES)
def test_parse_score_rejects_missing_and_out_of_range(reply, why):
    with pytest.raises(VerdictError, match=why) as info:
        parse_score(reply, 1, 10)
    assert reply[:20] in str(info.value)  # the reply is quoted for the user


def test_parse_score_quotes_a_long_reply_truncated():
    with pytest.raises(VerdictError) as info:
        parse_score("blah " * 500, 1, 10)
    assert len(str(info.value)) < 300 and str(info.value).endswith("...'")


def test_parse_score_other_scales():
    assert parse_score("SCORE: 0", 0, 1) == 0.0
    assert parse_score("Score: 4/5", 1, 5) == 4.0
    assert parse_score("SCORE: -2", -5, 5) == -2.0


@pytest.mark.parametrize(("reply", "expected"), [
    ("WINNER: A", "A"), ("Winner: **B**", "B"), ("winner: tie", "tie"), ("Verdict: Response B", "B"),
    ("A is clearer.\n**Better response:** A", "A"), ("[[B]]", "B"), ("[[C]]", "tie"),
    ("WINNER: B\nWait, A handles the edge case.\nWINNER: A", "A"),
])
def test_parse_verdict(reply, expected):
    assert parse_verdict(reply) == expected


@pytest.mark.parametrize("reply", ["", "Both are fine.", "WINNER: neither", "The winner is clear"])
def test_parse_verdict_failures(reply):
    with pytest.raises(VerdictError, match="no verdict"):
        parse_verdict(reply)


# -------------------------------------------------------------------------------------------------------------
# A scripted OpenAI-compatible judge
# -------------------------------------------------------------------------------------------------------------

RESPONSE = re.compile(r"<response-([0-9a-f]{16})>\n(.*)\n</response-\1>", re.S)
PAIR = re.compile(r"<response-a-([0-9a-f]{16})>\n(.*)\n</response-a-\1>.*<response-b-\1>\n(.*)\n</response-b-\1>", re.S)
GROUP = re.compile(r"<response-(\d+)-([0-9a-f]{16})>\n(.*?)\n</response-\1-\2>", re.S)
MODES = ("score", "flaky", "slow", "hang", "garbage", "biased", "partial", "busy")


@dataclass
class Script:
    """What the scripted judge saw: request bodies, attempts per text, requests in flight per mode."""

    bodies: list = field(default_factory=list)
    attempts: Counter = field(default_factory=Counter)
    in_flight: Counter = field(default_factory=Counter)
    max_in_flight: Counter = field(default_factory=Counter)
    disconnects: Counter = field(default_factory=Counter)


def scripted_reply(mode: str, text: str) -> str:
    if mode == "garbage":
        return "I cannot grade this response."
    pair = PAIR.search(text)
    if pair:
        if mode == "biased":
            return "Both are good; the first one reads better.\nWINNER: A"
        a, b = (s.count("7") for s in pair.groups()[1:])
        return "WINNER: " + ("A" if a > b else "B" if b > a else "TIE")
    group = GROUP.findall(text)
    if group:
        lines = [f"SCORE {k}: {body.count('7')}" for k, _, body in group]
        if mode == "partial":  # forgets the last response
            lines = lines[:-1]
        return "Compared them.\n" + "\n".join(lines)
    sevens = RESPONSE.search(text).group(2).count("7")
    return f"The response has {sevens} sevens.\nSCORE: {sevens}"


def scripted_judge_app(script: Script) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "test"}
                                           for m in MODES]}

    async def disconnected(request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        script.bodies.append(body)
        mode, text = body["model"], body["messages"][-1]["content"]
        script.in_flight[mode] += 1
        script.max_in_flight[mode] = max(script.max_in_flight[mode], script.in_flight[mode])
        try:
            script.attempts[_block(text)] += 1
            if mode == "flaky" and script.attempts[_block(text)] <= 2:
                return JSONResponse({"error": {"message": "overloaded", "type": "server_error"}}, status_code=503,
                                    headers={"retry-after-ms": "10"})
            if mode == "busy":
                return JSONResponse({"error": {"message": "rate limited", "type": "rate_limit_error"}},
                                    status_code=429, headers={"retry-after-ms": "10"})
            # like vLLM, stop working on a request whose client went away
            work = asyncio.ensure_future(asyncio.sleep({"slow": 0.2, "hang": 2.0}.get(mode, 0.0)))
            gone = asyncio.ensure_future(disconnected(request))
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
                script.disconnects[mode] += 1
                return JSONResponse({"error": {"message": "client went away"}}, status_code=499)
            gone.cancel()
            content = scripted_reply(mode, text)
        finally:
            script.in_flight[mode] -= 1
        return {"id": "x", "object": "chat.completion", "created": 0, "model": mode,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(text), "completion_tokens": len(content),
                          "total_tokens": len(text) + len(content)}}

    return app


@pytest.fixture(scope="module")
def server():
    script = Script()
    with ServerThread(scripted_judge_app(script)) as thread:
        thread.script = script
        yield thread


@pytest.fixture
def judge(server):
    """Build JudgeReward against the scripted server (model "score" unless given); closed after the test."""
    built = []
    server.script.bodies.clear()
    server.script.max_in_flight.clear()
    server.script.disconnects.clear()

    def make(**options):
        options.setdefault("model", "score")
        provider = JudgeReward(base_url=server.url, **options)
        built.append(provider)
        return provider

    yield make
    for provider in built:
        provider.close()


def _block(text: str) -> str:
    """The judged text without the request's random nonce (retries of one judgement carry different nonces)."""
    return re.sub(r"[0-9a-f]{16}", "NONCE", text)


def sample(completion: str, **row) -> Sample:
    return Sample("<|user|>rendered prompt<eos><|assistant|>", completion, {"prompt": "Write some sevens.", **row})


# -------------------------------------------------------------------------------------------------------------
# The provider against the scripted judge
# -------------------------------------------------------------------------------------------------------------

def test_scores_are_normalised_and_out_of_scale_is_an_error(judge, server):
    rewards = judge()([sample("777"), sample("7" * 10), sample("no sevens"), sample("7" * 12)])
    assert [r.status for r in rewards] == [Status.OK, Status.OK, Status.ERROR, Status.ERROR]
    assert rewards[0].value == pytest.approx(2 / 9) and rewards[1].value == 1.0  # (3-1)/9 and (10-1)/9
    assert "outside the scale 1-10" in rewards[2].detail and "SCORE: 0" in rewards[2].detail
    zero_based = judge(min_score=0, max_score=10)([sample("no sevens"), sample("777")])
    assert [r.value for r in zero_based] == [0.0, pytest.approx(0.3)]
    assert all(r.usable for r in zero_based)


def test_the_judge_sees_the_row_prompt_and_the_reference(judge, server):
    judge()([sample("777", answer="42"), sample("7")])
    with_ref, without = (b["messages"][0]["content"] for b in server.script.bodies)
    assert "Write some sevens." in with_ref and "rendered prompt" not in with_ref  # the row's text, no chat markup
    assert re.search(r"<reference-([0-9a-f]{16})>\n42\n</reference-\1>", with_ref)
    assert "<reference-" not in without and "reference answer" not in without
    assert server.script.bodies[0]["temperature"] == 0 and server.script.bodies[0]["max_tokens"] == 512


def test_user_template_file_and_rubric(judge, server, tmp_path):
    template = tmp_path / "judge.txt"
    template.write_text("Q: {prompt}\nRef: {reference}\n{data_notice}\n{completion}\n"
                        "Scale {min_score}-{max_score}. {rubric} {{literal}}")
    [reward] = judge(template=str(template), rubric="Be strict.")([sample("77", answer="9")])
    assert reward.value == pytest.approx(1 / 9)
    assert server.script.bodies[-1]["messages"][0]["content"].endswith("Scale 1-10. Be strict. {literal}")


def test_503s_are_retried_then_succeed_or_fail_as_error(judge, server):
    start = time.perf_counter()
    [ok] = judge(model="flaky", max_retries=2)([sample("7777")])
    assert ok.status is Status.OK and ok.value == pytest.approx(3 / 9)
    [failed] = judge(model="flaky", max_retries=1)([sample("77777")])
    assert failed.status is Status.ERROR and "HTTP 503" in failed.detail and "2 attempts" in failed.detail
    assert failed.value == 0.0 and not failed.usable
    assert time.perf_counter() - start < 5


def test_timeout_is_status_timeout(judge):
    provider = judge(model="hang", timeout=0.3, max_retries=0)
    start = time.perf_counter()
    [r] = provider([sample("7")])
    assert r.status is Status.TIMEOUT and "timed out after 0.3s" in r.detail
    assert time.perf_counter() - start < 1.5
    assert provider.metrics()["judge/timeouts"] == 1


def test_unparseable_reply_is_an_error_that_quotes_it(judge):
    provider = judge(model="garbage")
    [r] = provider([sample("777")])
    assert r.status is Status.ERROR and "'I cannot grade this response.'" in r.detail
    m = provider.metrics()
    assert m["judge/parse_failures"] == 1 and m["status/error"] == 1 and m["judge/requests"] == 1


def test_requests_overlap_up_to_the_concurrency_limit(judge, server):
    provider = judge(model="slow", concurrency=4)
    start = time.perf_counter()
    rewards = provider([sample("7" * (i % 10 + 1) + f" #{i}") for i in range(16)])
    elapsed = time.perf_counter() - start
    assert all(r.usable for r in rewards)
    # Overlap is shown by the server's own count of requests in flight at once, not by wall time (a loaded
    # machine stretches wall time; it cannot raise the count past the limit or make it reach 4 serially).
    assert server.script.max_in_flight["slow"] == 4 and provider.metrics()["judge/max_in_flight"] == 4
    assert elapsed >= 16 * 0.2 / 4 * 0.9, elapsed  # and never more than 4 at a time: 16 x 0.2 s in 4 lanes
    assert provider.metrics()["judge/latency_mean_s"] >= 0.2


def test_identical_samples_are_judged_once(judge, server):
    provider = judge()
    first = provider([sample("77"), sample("77"), sample("777")])
    again = provider([sample("77")])
    assert len(server.script.bodies) == 2
    assert first[0] == first[1] == again[0]
    m = provider.metrics()
    assert m["judge/cache_hits"] == 2 and m["judge/requests"] == 2 and m["status/ok"] == 4
    uncached = judge(cache=False)
    uncached([sample("77"), sample("77")])
    uncached([sample("77")])
    assert uncached.metrics()["judge/requests"] == 3


def test_failures_are_not_cached(judge):
    provider = judge(model="garbage")
    provider([sample("7")])
    provider([sample("7")])
    assert provider.metrics()["judge/requests"] == 2 and provider.metrics()["judge/cache_hits"] == 0


def test_compare_asks_both_orders(judge, server):
    provider = judge()
    assert provider.compare("p", "777", "7") == 1.0
    orders = [PAIR.search(b["messages"][0]["content"]).groups()[1:] for b in server.script.bodies]
    assert sorted(orders) == [("7", "777"), ("777", "7")]
    assert provider.compare("p", "7", "777") == 0.0
    assert provider.compare("p", "77", "77 ") == 0.5  # a tie both ways
    biased = judge(model="biased")
    assert biased.compare("p", "777", "7") == 0.5  # "always A" cancels out
    with pytest.raises(RewardProviderError, match="no verdict"):
        judge(model="garbage").compare("p", "777", "7")
    with pytest.raises(RewardProviderError, match="timeout"):
        judge(model="hang", timeout=0.2, max_retries=0).compare("p", "7", "77")


def test_online_dpo_ranks_pairs_with_compare(judge):
    from rewardhub.recipes.dpo import rank_and_pair

    completions = ["7", "77", "x", "777", "a", "b", "c", "d"]  # prompt "q2": no 7s anywhere, every pair a tie
    ranked = rank_and_pair(judge(), ["q1", "q2"], [{}, {}], completions, 4, rank_with="compare")
    pairs, stats = ranked.pairs, ranked.stats
    assert pairs == [("q1", "777", "x")] and stats["online/skipped"] == 1
    assert stats["reward/judge/requests"] == 2 * 6 * 2  # 6 pairs per prompt, both orders


def test_conforms_to_the_reward_contract(judge):
    rewards = check_provider(judge(min_score=0), [sample("777", answer="777"), sample("x")])
    assert [r.value for r in rewards] == [pytest.approx(0.3), 0.0]


def test_score_works_inside_a_running_event_loop(judge):
    provider = judge()

    async def caller():
        return provider([sample("777")])

    assert asyncio.run(caller())[0].value == pytest.approx(2 / 9)


def test_built_by_name_with_string_options(server):
    provider = build_reward("judge", {"base_url": server.url, "model": "score", "max_score": "5",
                                      "concurrency": "2", "cache": "false"})
    try:
        assert provider.name == "judge" and provider.max_score == 5.0 and provider.cache is False
        assert provider([sample("777")])[0].value == pytest.approx(0.5)  # (3-1)/(5-1)
    finally:
        provider.close()


def test_bad_options_say_what_to_fix(server, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match=r"--reward-arg base_url=http://host:port/v1"):
        JudgeReward(model="score")
    with pytest.raises(ConfigError, match=r"min_score \(10\) must be below max_score \(10\)"):
        JudgeReward(base_url=server.url, model="score", min_score=10)
    template = tmp_path / "t.txt"
    template.write_text("Rate {prompt}. {data_notice} SCORE: n")
    with pytest.raises(ConfigError, match=r"template must contain \{completion\}"):
        JudgeReward(base_url=server.url, model="score", template=str(template))
    with pytest.raises(ConfigError, match=r"unknown placeholder \{answer\}"):
        JudgeReward(base_url=server.url, model="score", template="{data_notice} {completion} vs {answer}")
    with pytest.raises(ConfigError, match="is not an existing file"):
        JudgeReward(base_url=server.url, model="score", template=str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="pairwise_template must contain"):
        JudgeReward(base_url=server.url, model="score", pairwise_template="{data_notice} {a} only")
    with pytest.raises(ConfigError) as info:
        build_reward("judge", {"base_url": "localhost:8000", "concurrency": "0", "timeout": "0"})
    text = str(info.value)
    assert "must start with http://" in text and "concurrency must be >= 1" in text and "timeout must be > 0" in text


def test_model_discovery_errors(server, monkeypatch):
    with pytest.raises(ConfigError, match=r"serves 8 models .*--reward-arg model=NAME"):
        JudgeReward(base_url=server.url)
    with pytest.raises(RewardhubError, match=r"could not list the models .*cannot connect"):
        JudgeReward(base_url="http://127.0.0.1:9/v1", max_retries=0, timeout=2)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    provider = JudgeReward(model="score", base_url=None)
    try:
        assert provider.base_url == server.url
    finally:
        provider.close()


def test_unreachable_judge_is_an_error_status_not_a_crash():
    provider = JudgeReward(base_url="http://127.0.0.1:9/v1", model="m", max_retries=0, timeout=2)
    try:
        [r] = provider([sample("7")])
        assert r.status is Status.ERROR and "cannot connect to the judge at http://127.0.0.1:9/v1" in r.detail
    finally:
        provider.close()


# -------------------------------------------------------------------------------------------------------------
# Load control against the scripted judge: timeouts, 429s, rate limits
# -------------------------------------------------------------------------------------------------------------

def _settled(server, mode: str, seconds: float = 3.0) -> None:
    """Wait until the scripted server has nothing of ``mode`` in flight (it notices disconnects at once)."""
    deadline = time.monotonic() + seconds
    while server.script.in_flight[mode] and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.parametrize("adaptive", [False, True])
def test_timed_out_requests_are_closed_and_never_pile_up_on_the_server(judge, server, adaptive):
    provider = judge(model="hang", concurrency=4, timeout=0.3, max_retries=1, adaptive=adaptive)
    rewards = provider([sample(f"7 #{i}") for i in range(8)])
    _settled(server, "hang")
    assert all(r.status is Status.TIMEOUT and "2 attempts" in r.detail for r in rewards)
    m = provider.metrics()
    assert m["judge/attempts"] == 16 and m["judge/cancelled"] == 16 and m["judge/retries"] == 8
    # every abandoned request was closed, and the server saw it: the judge never held more than the cap
    assert server.script.disconnects["hang"] == 16 and server.script.in_flight["hang"] == 0
    assert server.script.max_in_flight["hang"] <= 4 and m["judge/max_in_flight"] <= 4
    assert m["judge/concurrency_limit"] == (1 if adaptive else 4)  # AIMD: halved to the floor
    assert (m["judge/concurrency_decreases"] >= 2) if adaptive else (m["judge/concurrency_decreases"] == 0)


def test_429s_halve_the_concurrency_and_are_counted(judge):
    provider = judge(model="busy", concurrency=8, max_retries=2)
    [r] = provider([sample("7")])
    assert r.status is Status.ERROR and "HTTP 429" in r.detail and "3 attempts" in r.detail
    m = provider.metrics()
    assert m["judge/rate_limited"] == 3 and m["judge/concurrency_limit"] == 1  # 8 -> 4 -> 2 -> 1
    recovered = judge(model="score", concurrency=8)
    recovered.client.aimd.congestion(recovered.client.aimd.epoch())  # at 4 after a 429
    recovered([sample("7" * k + "x") for k in range(1, 9)])  # 8 successes: 4 -> 5 after 4, then 4 of 5 more
    assert recovered.metrics()["judge/concurrency_limit"] == 5


def test_rpm_limit_spaces_the_requests(judge):
    provider = judge(rpm=120)  # 2 a second, a burst of 2
    start = time.perf_counter()
    rewards = provider([sample("7" * k) for k in range(1, 5)])
    elapsed = time.perf_counter() - start
    assert all(r.usable for r in rewards)
    m = provider.metrics()
    # The limiter's guarantee: 4 requests at 2/s with a burst of 2 take at least 1 s. How much of that is spent
    # waiting depends on how long the requests themselves take (a loaded machine refills the bucket meanwhile).
    assert elapsed >= 0.95
    assert m["judge/throttled_waits"] in (1, 2) and 0 < m["judge/throttled_s"] <= 1.05


def test_rate_options_are_checked(server):
    with pytest.raises(ConfigError) as info:
        build_reward("judge", {"base_url": server.url, "model": "score", "rpm": "-1", "max_group": "1"})
    text = str(info.value)
    assert "rpm must be >= 0" in text and "max_group must be >= 2" in text
    with pytest.raises(ConfigError, match="'listwise' is not one of 'pointwise', 'groupwise'"):
        build_reward("judge", {"base_url": server.url, "model": "score", "mode": "listwise"})
    provider = build_reward("judge", {"base_url": server.url, "model": "score", "rpm": "0", "tpm": "none",
                                      "adaptive": "false"})
    try:
        assert provider.client.limiter.active is False and provider.client.aimd.adaptive is False
    finally:
        provider.close()


# -------------------------------------------------------------------------------------------------------------
# Groupwise: a prompt's completions ranked in one request
# -------------------------------------------------------------------------------------------------------------

def grouped(prompt: str, *completions: str) -> list[Sample]:
    return [Sample(f"<|user|>{prompt}<|assistant|>", c, {"prompt": prompt}) for c in completions]


def test_groupwise_scores_each_prompts_completions_in_one_request(judge, server):
    provider = judge(mode="groupwise", min_score=0)
    samples = grouped("p1", "777", "7", "x") + grouped("p2", "77") + grouped("p3", "7777", "77777")
    rewards = provider(samples)
    assert [r.value for r in rewards] == [pytest.approx(v) for v in (0.3, 0.1, 0.0, 0.2, 0.4, 0.5)]
    assert all(r.usable for r in rewards) and "response 1 of 3, groupwise" in rewards[0].detail
    texts = [b["messages"][0]["content"] for b in server.script.bodies]
    assert len(texts) == 3 and sum("<response-3-" in t for t in texts) == 1  # two groups and one single
    assert any("SCORE 1: <number from 0 to 10>\nSCORE 2: <number from 0 to 10>" in t for t in texts)
    m = provider.metrics()
    assert m["judge/groups"] == 2 and m["judge/requests"] == 3
    again = provider(samples)  # cached, groups and singles alike
    assert again == rewards and len(server.script.bodies) == 3


def test_groupwise_reply_missing_scores_fails_only_those_samples(judge):
    provider = judge(mode="groupwise", model="partial", min_score=0)
    rewards = provider(grouped("p1", "777", "7", "77") + grouped("p2", "7", "7777"))
    assert [r.status for r in rewards] == [Status.OK, Status.OK, Status.ERROR, Status.OK, Status.ERROR]
    assert "no score for response 3 of 3" in rewards[2].detail and "response 2 of 2" in rewards[4].detail
    assert rewards[0].value == pytest.approx(0.3) and not rewards[2].usable
    assert provider.metrics()["judge/parse_failures"] == 2


def test_groupwise_splits_long_runs_and_fails_a_whole_group_on_timeout(judge, server):
    provider = judge(mode="groupwise", max_group=2, min_score=0)
    provider(grouped("p", "7", "77", "777", "7777", "77777"))
    assert provider.metrics()["judge/groups"] == 2 and len(server.script.bodies) == 3  # 2 + 2 + a single
    hung = judge(mode="groupwise", model="hang", timeout=0.2, max_retries=0)
    rewards = hung(grouped("p", "7", "77"))
    assert all(r.status is Status.TIMEOUT and "groupwise request for 2 responses" in r.detail for r in rewards)


# -------------------------------------------------------------------------------------------------------------
# The real server (`rewardhub serve`) on the tiny random model
# -------------------------------------------------------------------------------------------------------------

def test_serve_tiny_model_plumbing(tiny_model_path):
    import openai

    local = load_local_model(str(tiny_model_path), name="tiny-judge")
    with ServerThread(create_app(local)) as thread:
        client = openai.OpenAI(base_url=thread.url, api_key="sk-local", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny-judge"]
        reply = client.chat.completions.create(model="tiny-judge", messages=[{"role": "user", "content": "2+2="}],
                                               max_tokens=5, temperature=0)
        assert reply.usage.prompt_tokens == 7  # <|user|> 2 + 2 = <eos> <|assistant|>: the chat template, char tokens
        assert 1 <= reply.usage.completion_tokens <= 5 and reply.choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.BadRequestError, match="n=2 is not supported"):
            client.chat.completions.create(model="tiny-judge", messages=[{"role": "user", "content": "x"}], n=2)

        judge = JudgeReward(base_url=thread.url, max_tokens=6)  # the model name is discovered
        try:
            [r] = judge([sample("777")])
            assert judge.model == "tiny-judge"
            assert r.status is Status.ERROR and not r.usable and "no score" in r.detail  # random text: masked
            m = judge.metrics()
            assert m["judge/requests"] == 1 and m["judge/parse_failures"] == 1 and m["judge/completion_tokens"] >= 1
            assert local.requests == 2  # the direct request and the judge's both reached the model
        finally:
            judge.close()


def test_serve_requires_the_api_key_when_given(tiny_model_path):
    import openai

    local = load_local_model(str(tiny_model_path), name="tiny")
    with ServerThread(create_app(local, api_key="secret")) as thread:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=thread.url, api_key="wrong", max_retries=0).models.list()
        assert openai.OpenAI(base_url=thread.url, api_key="secret").models.list().data[0].id == "tiny"


def test_serve_command_reports_bad_input(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "the path does not exist" in capsys.readouterr().err
    assert main(["serve", "--model", "x", "--port", "70000"]) == 2
    assert "--port must be between 0 and 65535" in capsys.readouterr().err


def test_serve_drops_a_request_whose_client_went_away(tiny_model_path):
    import openai

    local = load_local_model(str(tiny_model_path), name="tiny")
    with ServerThread(create_app(local)) as thread:
        client = openai.OpenAI(base_url=thread.url, api_key="sk-local", max_retries=0, timeout=0.3)
        with local.lock:  # the model is busy: the request waits, and its client gives up
            with pytest.raises(openai.APITimeoutError):
                client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
            deadline = time.monotonic() + 3
            while local.cancelled == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert local.cancelled == 1  # noticed while still waiting for the model
        time.sleep(0.1)
        assert local.requests == 0 and local.in_flight == 0  # it never generated


def test_serve_stops_generating_when_cancelled(tiny_model_path):
    from rewardhub_judge.server import ChatRequest, RequestError

    class CancelAfter(threading.Event):
        """Reads as set from the 4th look on: the stopping criterion is asked once per generated token."""

        looks = 0

        def is_set(self):
            self.looks += 1
            return self.looks > 3

    local = load_local_model(str(tiny_model_path), name="tiny")
    cancel = CancelAfter()
    request = ChatRequest(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=200,
                          temperature=0)
    with pytest.raises(RequestError, match="generation stopped") as info:
        local.complete(request, cancel)
    assert info.value.status == 499 and cancel.looks < 10  # stopped after a few tokens, not 200
    assert local.cancelled == 1 and local.in_flight == 0


# -------------------------------------------------------------------------------------------------------------
# End to end: GRPO with the judge reward, through the CLI
# -------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["pointwise", "groupwise"])
def test_grpo_trains_against_the_judge(tiny_model_path, tmp_path, server, capsys, mode):
    out = tmp_path / "rlaif"
    code = main(["train", "--algo", "grpo", "--reward", "judge", "--reward-arg", f"base_url={server.url}",
                 "--reward-arg", "model=score", "--reward-arg", "min_score=0", "--reward-arg", f"mode={mode}",
                 "--model", str(tiny_model_path),
                 "--data-arg", "size=32", "--max-steps", "3", "--batch-size", "2", "--num-generations", "2",
                 "--max-new-tokens", "4", "--eval-size", "4", "--threads", "1", "--log-every", "1",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) == 3 and all("reward/mean" in r for r in train)
    assert all(0.0 <= r["reward/mean"] <= 0.4 for r in train)  # 4 tokens hold at most 4 sevens: <= 4/10
    assert train[-1]["provider/judge/requests"] >= 1 and train[-1]["provider/status/ok"] >= 12
    assert "provider/judge/concurrency_limit" in train[-1] and "provider/judge/cancelled" in train[-1]
    if mode == "groupwise":  # the loop lays a prompt's generations out consecutively: one request per prompt
        assert train[-1]["provider/judge/groups"] >= 1
