"""The reward contract, composition and `--reward` resolution."""

import math

import pytest

from rewardhub import Reward, RewardProvider, Sample, Status
from rewardhub.errors import ConfigError, RewardProviderError, UnknownNameError
from rewardhub.reward_resolution import (
    FunctionReward,
    WeightedReward,
    build_reward,
    check_reward_spec,
    parse_reward_spec,
    summarize,
)
from rewardhub.rewards import as_reward
from rewardhub.testing import ConformanceError, check_provider
from rewardhub_basic import ExactMatch, Length


class Fixed(RewardProvider):
    def __init__(self, values, status=Status.OK):
        super().__init__()
        self.values, self.status = values, status

    def score(self, samples):
        return [Reward(v, self.status) for v in self.values[: len(samples)]]


def samples(n):
    return [Sample(f"{i}+0=", str(i), {"answer": str(i)}) for i in range(n)]


def test_reward_validation_and_failure_constructor():
    assert Reward(1).value == 1.0 and Reward(0.5, "wrong").status is Status.WRONG
    with pytest.raises(ValueError):
        Reward(float("nan"))
    with pytest.raises(ValueError):
        Reward.failed(Status.OK, "not a failure")
    failed = Reward.failed("timeout", "judge took 30s")
    assert not failed.usable and failed.detail == "judge took 30s"
    assert Reward.failed(Status.ERROR, "x").value == 0.0  # value is ignored by the loop, kept finite


def test_result_count_and_types_are_enforced():
    with pytest.raises(RewardProviderError, match="returned 1 results for 3 samples"):
        Fixed([1.0])(samples(3))

    class ReturnsFloats(RewardProvider):
        def score(self, batch):
            return [1.0 for _ in batch]

    with pytest.raises(RewardProviderError, match="returned float for sample 0"):
        ReturnsFloats()(samples(2))
    assert Fixed([1.0])([]) == []


def test_counters_feed_metrics():
    provider = Fixed([1.0, 0.0], Status.WRONG)
    provider(samples(2))
    provider(samples(1))
    assert provider.metrics() == {"status/wrong": 3.0}


def test_as_reward_conversions():
    assert as_reward(True, "f") == Reward(1.0, Status.OK)
    assert as_reward(False, "f") == Reward(0.0, Status.WRONG)
    assert as_reward(None, "f").status is Status.NO_ANSWER
    assert as_reward(3, "f").value == 3.0
    assert as_reward("yes", "f").status is Status.ERROR
    assert as_reward(math.inf, "f").status is Status.ERROR


def test_function_reward_turns_exceptions_into_error_status():
    def check(completion, row):
        return 1 / int(completion)

    out = FunctionReward(check)([Sample("p", "4"), Sample("p", "0"), Sample("p", "2")])
    assert [r.value for r in out] == [0.25, 0.0, 0.5]
    assert out[1].status is Status.ERROR and "ZeroDivisionError" in out[1].detail


def test_weighted_mix_by_hand():
    a, b = Fixed([1.0, 0.0, 1.0]), Fixed([-2.0, 4.0, 0.0])
    from rewardhub.reward_resolution import RewardTerm

    mix = WeightedReward([(RewardTerm("a", 1.0), a), (RewardTerm("b", 0.5), b)])
    out = mix(samples(3))
    assert [r.value for r in out] == [1.0 - 1.0, 0.0 + 2.0, 1.0 + 0.0]
    assert out[1].parts == {"a": 0.0, "b": 4.0}
    assert mix.metrics()["a/status/ok"] == 3.0


def test_a_failed_component_fails_the_sample():
    from rewardhub.reward_resolution import RewardTerm

    ok, broken = Fixed([1.0, 1.0]), Fixed([0.0, 0.0], Status.TIMEOUT)
    out = WeightedReward([(RewardTerm("ok", 1.0), ok), (RewardTerm("judge", 1.0), broken)])(samples(2))
    assert all(r.status is Status.TIMEOUT and r.detail.startswith("judge:") for r in out)


def test_parse_reward_spec():
    assert [(t.name, t.weight) for t in parse_reward_spec("verifier=1.0,length=0.1")] == [
        ("verifier", 1.0), ("length", 0.1)]
    assert [(t.name, t.weight) for t in parse_reward_spec("pkg.mod:fn=2")] == [("pkg.mod:fn", 2.0)]
    for bad in ["", "a=x", "a,a", "a,,b"]:
        with pytest.raises(ConfigError):
            parse_reward_spec(bad)


def test_unknown_reward_fails_listing_available():
    with pytest.raises(UnknownNameError) as err:
        check_reward_spec("exact-match=1,lenght=0.1")
    assert "'lenght'" in str(err.value) and "length" in str(err.value) and "exact-match" in str(err.value)


def test_build_with_typed_options_and_clear_errors():
    provider = build_reward("length", {"scale": "10", "unit": "words"})
    assert isinstance(provider, Length) and provider.scale == 10.0 and provider.name == "length"
    with pytest.raises(ConfigError) as err:
        build_reward("length", {"scale": "big", "colour": "red"})
    text = str(err.value)
    assert "'scale'" in text and "not a number" in text and "no option 'colour'" in text and "target" in text
    mix = build_reward("exact-match=1,length=0.5", {"length.scale": "4"})
    assert isinstance(mix, WeightedReward) and mix.components[1][1].scale == 4.0
    with pytest.raises(ConfigError, match="ambiguous"):
        build_reward("exact-match=1,length=0.5", {"scale": "4"})
    with pytest.raises(ConfigError, match="unit"):
        build_reward("length", {"unit": "bytes"})


def test_import_path_specs(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text("def has_seven(completion, row):\n    return '7' in completion\n")
    provider = build_reward(f"{path}:has_seven")
    assert [r.value for r in provider([Sample("p", "17"), Sample("p", "1")])] == [1.0, 0.0]
    with pytest.raises(UnknownNameError, match="no attribute 'nope'"):
        build_reward(f"{path}:nope")
    with pytest.raises(UnknownNameError, match="cannot import module"):
        check_reward_spec("no_such_module_xyz:fn")
    provider = build_reward("rewardhub_basic:Length", {"scale": "2"})
    assert provider([Sample("p", "abcd")])[0].value == -2.0


def test_exact_match_and_length_by_hand():
    rewards = ExactMatch()([Sample("1+1=", " 2\nmore", {"answer": 2}), Sample("1+1=", "3", {"answer": "2"}),
                            Sample("1+1=", "", {"answer": "2"}), Sample("1+1=", "2", {})])
    assert [(r.value, r.status.value) for r in rewards] == [
        (1.0, "ok"), (0.0, "wrong"), (0.0, "no_answer"), (0.0, "error")]
    assert Length(target=3, scale=2)([Sample("p", "abcdefg")])[0].value == -2.0
    assert Length(unit="words", scale=1)([Sample("p", "a b c")])[0].value == -3.0


def test_conformance_check_accepts_builtins_and_catches_a_raising_provider():
    check_provider(ExactMatch())
    check_provider(Length())

    class Fragile(RewardProvider):
        def score(self, batch):
            return [Reward(1.0 / len(s.completion)) for s in batch]

    with pytest.raises(ConformanceError, match="ZeroDivisionError"):
        check_provider(Fragile())


def test_summarize():
    stats = summarize([Reward(1.0), Reward(0.0, Status.WRONG), Reward.failed(Status.TIMEOUT, "t")])
    assert stats["mean"] == 0.5 and stats["std"] == 0.5 and stats["frac_timeout"] == pytest.approx(1 / 3)


def test_default_compare_is_bradley_terry():
    p = Fixed([2.0, 1.0]).compare("q", "a", "b")
    assert p == pytest.approx(1 / (1 + math.exp(-1.0)))
    with pytest.raises(NotImplementedError, match="stores no preference pairs"):
        Fixed([]).preference_pairs()
