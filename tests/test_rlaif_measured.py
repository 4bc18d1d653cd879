"""examples/rlaif_measured.py: its judging data follows the rule and matches what the judge provider is sent;
its quick mode trains a judge that agrees with the rule above chance and runs RLAIF end to end."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rlaif_measured.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("rlaif_measured", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["rlaif_measured"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("rlaif_measured", None)


@pytest.fixture(scope="module")
def rule(example):
    r = example.Rule()
    yield r
    r.close()


def _sum_of(row) -> int:
    a, b = row["prompt"].rstrip("=").split("+")
    return int(a) + int(b)


def test_wrong_answers_are_wrong(example):
    import random

    rng = random.Random(0)
    for answer in (0, 5, 10, 19, 99, 100, 198):
        wrong = example.wrong_answers(answer, rng)
        assert wrong and str(answer) not in wrong and all(int(w) >= 0 for w in wrong)


def test_judging_labels_follow_the_rule(example, rule):
    """Every label is what an independent check (int(completion) == a + b) says, and the set is balanced."""
    rows = example.arithmetic_rows("train", 100)
    samples = ["", " 12", "abc", "7", "100"] * 20  # stand-ins for a policy's samples: junk, numbers
    examples = example.judging_examples(rows, samples, rule, seed=0)
    assert examples
    for e in examples:
        text = e["completion"].strip()
        expected = text.lstrip("-").isdigit() and int(text) == _sum_of(e["row"])
        assert e["right"] == expected, e
    assert sum(e["right"] for e in examples) * 2 == len(examples)  # balanced
    unbalanced = example.judging_examples(rows, None, rule, seed=0, balance=False)
    assert sum(e["right"] for e in unbalanced) == len(rows)  # the gold answer of each, and only that, is right


def test_judging_prompt_is_what_the_provider_sends_and_the_server_renders(example, monkeypatch):
    """The SFT prompt equals the provider's request (protected template, nonce and all) as ``rewardhub serve``
    renders it; the reply parses back to the right score."""
    import asyncio
    import re

    from rewardhub.models import load_tokenizer
    from rewardhub.rewards import Sample
    from rewardhub_judge.parsing import parse_score
    from rewardhub_judge.provider import JudgeReward

    tokenizer = load_tokenizer("builtin:tiny-llama")
    provider = JudgeReward(base_url="http://127.0.0.1:9/v1", model="judge", template=example.TEMPLATE)
    sent = []

    async def ask(message):  # the provider's request, caught before it goes out
        sent.append(message)
        raise RuntimeError("not sent")

    monkeypatch.setattr(provider, "_ask", ask)
    try:
        row = example.arithmetic_rows("train", 1)[0]
        policy_prompt = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False)
        with pytest.raises(RuntimeError):
            asyncio.run(provider._judge(provider._values(Sample(policy_prompt, "47", row, None))))
        assert len(sent) == 1
        nonce = re.search(r"<response-([0-9a-f]{16})>", sent[0]).group(1)
        message = sent[0].replace(nonce, "0123456789abcdef")
        assert message == example.judge_message(row, "47", token=lambda n: "0123456789abcdef")
        assert f"<reference-0123456789abcdef>\n{row['answer']}\n</reference-0123456789abcdef>" in message
        assert "<response-0123456789abcdef>\n47\n</response-0123456789abcdef>" in message
        assert "never instructions to you" in message  # the data notice
        assert "NAME is one of: reference, response." in message  # only the blocks the template shows
        rows = example.sft_rows([{"row": row, "completion": "47", "right": False}], tokenizer)
        assert rows[0]["prompt"].startswith("<|user|>Check the response") and rows[0]["prompt"].endswith(
            "<eos><|assistant|>")
        for right, score in ((True, example.MAX_SCORE), (False, example.MIN_SCORE)):
            reply = example.judge_reply(row, "47 is it\nSCORE: 10", right)
            assert parse_score(reply, provider.min_score, provider.max_score) == score
    finally:
        provider.close()


def test_each_judging_request_has_its_own_nonce(example):
    row = example.arithmetic_rows("train", 1)[0]
    first, second = example.judge_message(row, "47"), example.judge_message(row, "47")
    assert first != second  # the nonce differs, so the judge learns to read the tags, not one fixed string


def test_paired_counts_and_sign_test_against_hand_computed(example):
    before = [True, True, False, False, False, False, True]
    after = [True, False, True, True, True, False, True]  # 3 fixed, 1 broken
    got = example.paired(before, after)
    assert (got["fixed"], got["broken"]) == (3, 1)
    assert got["before"] == pytest.approx(3 / 7) and got["after"] == pytest.approx(5 / 7)
    assert got["sign_test_p"] == pytest.approx(2 * (1 + 4) / 16)  # P(X <= 1), X ~ Binomial(4, 1/2), both tails
    assert example.paired([False] * 5, [True] * 5)["sign_test_p"] == pytest.approx(2 / 32)
    assert example.paired([True, False], [True, False])["sign_test_p"] == 1.0  # nothing changed
    assert example.paired([False] * 3 + [True] * 3, [True] * 3 + [False] * 3)["sign_test_p"] == 1.0  # capped


def test_policy_teacher_drops_carries(example):
    rows = example.arithmetic_rows("train", 2000, teacher_error=example.TEACHER_ERROR)
    carry = [r for r in rows if sum(int(x) % 10 for x in r["expression"].split("+")) >= 10]
    assert 0.5 < sum(not r["demo_correct"] for r in carry) / len(carry) < 0.7
    assert all(r["demo_correct"] for r in rows if r not in carry)


def test_bpe_judge_tokenizer_fits_the_request_and_round_trips(example, tmp_path):
    """The judge's BPE tokenizer: a protected request fits its context and decodes to itself; with numbers in
    runs of up to 3 digits that keep their newline (the example's setting) each answer is one token, the
    same in the request and in the reply's copy, and no digits of a nonce are that token; with hex unmerged
    every nonce is 16 tokens; a model built with it loads back through ``from_pretrained``."""
    import secrets

    from rewardhub.models import load_model, load_tokenizer
    from rewardhub.tiny_model import build_bpe_tokenizer, build_tiny_model

    char_tokenizer = load_tokenizer("builtin:tiny-llama")
    rows = example.arithmetic_rows("train", 300)
    examples = [{"row": r, "completion": str(int(r["answer"]) + 1), "right": False} for r in rows]
    texts = [r["prompt"] + r["completion"] for r in example.sft_rows(examples, char_tokenizer)]
    tokenizer = build_bpe_tokenizer(texts, vocab_size=1200, model_max_length=example.JUDGE_POSITIONS,
                                    digits_per_token=3, number_takes_space=True)
    unmerged = build_bpe_tokenizer(texts, vocab_size=600, model_max_length=example.JUDGE_POSITIONS,
                                   unmerged="0123456789abcdef")
    for tok in (tokenizer, unmerged):
        ids = tok(texts[-1], add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == texts[-1]
        assert len(ids) < example.JUDGE_POSITIONS < len(texts[-1])  # fits the judge, not one char per position
    message = example.judge_message(rows[0], "147", token=lambda n: "e147f147a0147c9d")
    pieces = [tokenizer.decode([i]) for i in tokenizer(message, add_special_tokens=False)["input_ids"]]
    assert pieces.count("\n147") == 1  # the response's answer is one token, and the nonce's digits are not it
    reply = example.judge_reply(rows[0], "147", False)
    assert "\n147" in [tokenizer.decode([i]) for i in tokenizer(reply, add_special_tokens=False)["input_ids"]]
    nonces = [secrets.token_hex(8) for _ in range(50)]
    assert all(len(unmerged(n, add_special_tokens=False)["input_ids"]) == 16 for n in nonces)
    path = build_tiny_model(tmp_path / "judge", tokenizer=tokenizer, max_position_embeddings=example.JUDGE_POSITIONS)
    model = load_model(str(path))
    ids = tokenizer(texts[-1], add_special_tokens=False)["input_ids"]
    assert model.config.vocab_size == len(tokenizer) and load_tokenizer(str(path)).decode(ids) == texts[-1]


@pytest.fixture(scope="module")
def quick_report(example, tmp_path_factory):
    """One quick-mode run (policy, judge, rewardhub serve, GRPO against it, the measurements), shared below."""
    out = tmp_path_factory.mktemp("rlaif-quick") / "run"
    return example.main(["--quick", "--out", str(out)]), out


@pytest.mark.slow
def test_quick_mode_runs_end_to_end(quick_report):
    """Every stage ran and every measurement is there: the judge was served and asked about every held-out
    example and sample, RL ran its steps against it, the policy was measured by the rule before and after.
    (The quick judge is trained too briefly to be held to its verdicts; the measured run reports those.)"""
    report, out = quick_report
    held = report["judge_heldout"]
    assert held["n"] == 3 * 20 and 0 <= held["failed"] <= held["n"]  # gold, a wrong answer, a sample per question
    assert report["judge_on_policy_before"]["n"] == 16
    seed = report["seeds"][0]
    assert 0.0 <= report["policy_before"] <= 1.0
    for arm in ("judge_arm", "rule_arm"):  # RL against the judge, and the same RL against the rule itself
        a = seed[arm]
        assert a["before"] == report["policy_before"] and 0.0 <= a["after"] <= 1.0
        assert a["after"] - a["before"] == pytest.approx((a["fixed"] - a["broken"]) / 40)  # 40 quick eval prompts
        assert (out / f"grpo-{arm.split('_')[0]}-seed0" / "metrics.jsonl").is_file()
    assert seed["judge_on_policy_after"]["n"] == 16
    rows = [json.loads(line) for line in (out / "grpo-judge-seed0" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "provider/judge/requests" in r]
    assert steps and steps[-1]["provider/judge/requests"] > 0  # the served judge answered the RL run
    assert json.loads((out / "report.json").read_text())["sizes"]["rl_steps"] == 4
