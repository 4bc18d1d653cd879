"""The one loop (rewardhub.loop.run) with a recipe small enough to check by hand: a scalar that steps by its lr."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from conftest import records

from rewardhub.config import SFTConfig
from rewardhub.errors import RewardProviderError
from rewardhub.loop import Outcome, run, window_mean


@dataclass
class CounterState:
    accelerator: object
    weight: torch.nn.Parameter
    optimizer: torch.optim.Optimizer
    evaluations: int = 0
    first_step: int | None = None


class Counter:
    """Each step moves one weight by exactly lr (SGD on loss = -w); evaluation reports the weight."""

    label = "counter"

    def __init__(self, eval_before: bool = True, held_out: bool = True, fail_at: int | None = None):
        self.eval_before, self.held_out, self.fail_at = eval_before, held_out, fail_at

    def setup(self, accelerator) -> CounterState:
        weight = torch.nn.Parameter(torch.zeros(()))
        optimizer = torch.optim.SGD([weight], lr=0.5)
        module = torch.nn.Module()
        module.weight = weight
        _, optimizer = accelerator.prepare(module, optimizer)
        return CounterState(accelerator, weight, optimizer)

    def step(self, state: CounterState, step: int) -> dict[str, float]:
        if step == self.fail_at:
            raise RewardProviderError("the reward server went away")
        state.first_step = step if state.first_step is None else state.first_step
        (-state.weight).backward()
        state.optimizer.step()
        state.optimizer.zero_grad()
        return {"weight": float(state.weight.detach()), "step_seen": float(step), "tokens": 10}

    def evaluate(self, state: CounterState) -> dict[str, float] | None:
        if not self.held_out:
            return None
        state.evaluations += 1
        return {"weight": float(state.weight.detach())}

    def finish(self, state: CounterState, outcome: Outcome) -> dict:
        return {"before": outcome.before, "after": outcome.after, "last": outcome.last, "steps": outcome.steps,
                "evaluations": state.evaluations, "first_step": state.first_step}


def cfg(tmp_path, **kw) -> SFTConfig:
    base = dict(out=str(tmp_path), max_steps=6, log_every=3, eval_every=4, save_every=2, seed=0)
    return SFTConfig(**{**base, **kw})



def test_window_mean_averages_each_key_over_the_steps_that_reported_it():
    assert window_mean([{"a": 1.0, "b": 4.0}, {"a": 3.0}]) == {"a": 2.0, "b": 4.0}


def test_run_logs_window_means_evaluates_before_periodically_and_after(tmp_path):
    final = run(Counter(), cfg(tmp_path))
    assert final["steps"] == 6 and final["last"]["weight"] == pytest.approx(3.0)
    assert final["before"]["weight"] == 0.0 and final["after"]["weight"] == pytest.approx(3.0)
    train = records(tmp_path, "train")
    assert [r["step"] for r in train] == [3, 6]
    assert train[0]["step_seen"] == pytest.approx(2.0)  # mean of steps 1, 2, 3
    assert train[0]["weight"] == pytest.approx((0.5 + 1.0 + 1.5) / 3)
    assert "tokens" not in train[0] and train[0]["tokens_per_s"] > 0
    assert [r["step"] for r in records(tmp_path, "eval")] == [0, 4, 6]  # before, periodic, final
    assert final["evaluations"] == 3


def test_a_recipe_without_held_out_data_is_never_evaluated(tmp_path):
    final = run(Counter(held_out=False), cfg(tmp_path))
    assert final["before"] == {} and final["after"] == {} and records(tmp_path, "eval") == []


def test_a_failing_reward_source_checkpoints_finished_steps_and_the_rerun_resumes(tmp_path):
    straight = run(Counter(), cfg(tmp_path / "straight"))
    with pytest.raises(RewardProviderError):
        run(Counter(fail_at=4), cfg(tmp_path / "resumed"))
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "step-3" / "trainer_state.json").read_text())
    assert state["interrupted"] is True and state["eval_before"]["weight"] == 0.0
    resumed = run(Counter(), cfg(tmp_path / "resumed"))
    assert resumed["first_step"] == 4  # steps 1-3 were not run again
    assert resumed["last"]["weight"] == pytest.approx(straight["last"]["weight"])  # the weight came back
    assert resumed["before"]["weight"] == 0.0  # the step-0 evaluation survives the restart
    assert resumed["evaluations"] == 2  # not re-run at step 0: periodic (step 4) and final


def test_max_time_stops_at_a_step_boundary_and_the_final_checkpoint_says_why(tmp_path):
    class Slow(Counter):
        def step(self, state, step):
            import time

            time.sleep(0.05)
            return super().step(state, step)

    final = run(Slow(eval_before=False), cfg(tmp_path, max_steps=10_000, max_time="0.3s", save_every=0))
    assert 1 <= final["steps"] < 10_000
    state = json.loads((tmp_path / "checkpoints" / f"step-{final['steps']}" / "trainer_state.json").read_text())
    assert state["stopped_by"] == "max_time" and state["final"] is True


def test_a_torn_checkpoint_is_skipped_and_the_one_before_it_resumed(tmp_path, caplog):
    straight = run(Counter(eval_before=False), cfg(tmp_path / "straight", max_steps=6, keep_checkpoints=3))
    out = tmp_path / "torn"
    run(Counter(eval_before=False), cfg(out, max_steps=4, keep_checkpoints=3))
    (out / "checkpoints" / "step-4" / "trainer_state.json").write_text("")  # a kill mid-write, before atomicity
    (out / "checkpoints" / ".partial-step-5").mkdir()  # a checkpoint being written when the run died
    with caplog.at_level("WARNING"):
        resumed = run(Counter(eval_before=False), cfg(out, max_steps=6, keep_checkpoints=3, force_resume=True))
    assert "step-4 is damaged" in caplog.text
    assert resumed["first_step"] == 3  # resumed from step-2
    assert resumed["last"]["weight"] == pytest.approx(straight["last"]["weight"])
    # the torn step-4 was rewritten whole, the partial one cleared
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4", "step-6"]
    assert json.loads((out / "checkpoints" / "step-4" / "trainer_state.json").read_text())["step"] == 4
