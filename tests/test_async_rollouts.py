"""Pipelined RL (--async-rollouts): the staleness schedule, exactness at staleness 0, off-policy ratios against the
behaviour policy, exact resume, clean stops and surfaced worker errors, the server-style weight push, the CLI."""

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import load_weights, records
from test_ppo import Sevens, cfg
from transformers import AutoModelForCausalLM

from rewardhub.errors import ConfigError
from rewardhub.generation import TorchBackend
from rewardhub.logprobs import sequence_logprobs
from rewardhub.loop import run
from rewardhub.recipes.rl import RL, rollout_forward, train_rl
from rewardhub.rollout_pipeline import next_version, split_threads, staleness

WORKER = "rewardhub-rollouts"


def pipelined(tiny_model_path, out, **kw):
    base = dict(max_steps=5, async_rollouts=True, max_staleness=1, lr=1e-2)
    return cfg(tiny_model_path, out, **{**base, **kw})


def worker_alive() -> bool:
    return any(t.name == WORKER for t in threading.enumerate())


def schedule(max_staleness, steps):
    """(weights version, staleness) of each step's rollout, as the pipeline plans them."""
    versions = [0]
    for step in range(1, steps):
        v = next_version(step, versions[-1], max_staleness)
        versions.append(step if v is None else v)  # None: sampled when step + 1 starts, from its weights
    return [(v, staleness(n, v)) for n, v in enumerate(versions, 1)]


# ---- the bookkeeping, against hand-computed values -------------------------------------------------------------

def test_the_staleness_schedule_is_the_hand_computed_one():
    assert schedule(0, 5) == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)]  # synchronous
    assert schedule(1, 5) == [(0, 0), (0, 1), (1, 1), (2, 1), (3, 1)]  # one-step off-policy
    # every other update refreshes: 1, 2, 1, 2 (half the weight pushes)
    assert schedule(2, 7) == [(0, 0), (0, 1), (0, 2), (2, 1), (2, 2), (4, 1), (4, 2)]
    assert schedule(3, 8) == [(0, 0), (0, 1), (0, 2), (0, 3), (3, 1), (3, 2), (3, 3), (6, 1)]
    assert split_threads(2) == (1, 1) and split_threads(3) == (2, 1) and split_threads(1) == (1, 1)
    assert split_threads(8) == (4, 4)


def test_bad_settings_are_refused_saying_what_to_change(tiny_model_path, tmp_path):
    with pytest.raises(ConfigError, match="max_staleness must be an int >= 0"):
        pipelined(tiny_model_path, tmp_path, max_staleness=-1).validate()
    with pytest.raises(ConfigError, match="async_rollouts with recompute_logprobs"):
        pipelined(tiny_model_path, tmp_path, recompute_logprobs=True).validate()


# ---- (a) staleness 0 is the synchronous loop ----------------------------------------------------------------------

# The two runs are compared in a fresh process with MKL_CBWR=COMPATIBLE: without it MKL picks kernels by memory
# alignment (its "conditional numerical reproducibility"), and a weight copy shifts the allocations, so the LoRA run's
# log-probs differed in the last bit (4.8e-7, seen on this machine; bit-identical with the variable set).
SAME_AS_SYNC = """
import json, sys, torch
from safetensors.torch import load_file
from rewardhub.config import RLConfig
from rewardhub.recipes.rl import train_rl
from rewardhub.rewards import Reward, RewardProvider

class Sevens(RewardProvider):
    def score(self, samples):
        return [Reward(float(s.completion.count("7"))) for s in samples]

model, out, lora = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = dict(model=model, algo="grpo", data="arithmetic", data_args={"size": 128}, max_steps=4, batch_size=4,
            num_generations=4, max_new_tokens=6, lr=1e-2, warmup_ratio=0.0, lr_scheduler="constant", log_every=1,
            eval_every=0, save_every=0, eval_size=8, threads=1, completions_every=0, seed=0, lora_r=lora)
train_rl(RLConfig(**base, out=out + "/sync"), provider=Sevens())
train_rl(RLConfig(**base, out=out + "/async", async_rollouts=True, max_staleness=0), provider=Sevens())
a, b = (load_file(out + f"/{d}/model/model.safetensors") for d in ("sync", "async"))
rows = [json.loads(line) for line in open(out + "/async/metrics.jsonl")]
print(json.dumps({"equal": all(torch.equal(a[k], b[k]) for k in a), "keys": len(a),
                  "staleness": [r["rollout/staleness"] for r in rows if r.get("kind") == "train"],
                  "kl": all("kl/mean_per_seq" in r for r in rows if r.get("kind") == "train")}))
"""


@pytest.mark.parametrize("lora", [0, 4], ids=["full", "lora"])  # LoRA: the reference is the adapter-disabled policy
def test_staleness_zero_gives_the_synchronous_weights_exactly(lora, tiny_model_path, tmp_path):
    env = {**os.environ, "MKL_CBWR": "COMPATIBLE"}
    proc = subprocess.run([sys.executable, "-c", SAME_AS_SYNC, str(tiny_model_path), str(tmp_path), str(lora)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"equal": True, "keys": result["keys"], "staleness": [0, 0, 0, 0], "kl": True}
    trained = load_weights(tmp_path / "async")
    before = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    assert any(not torch.equal(trained[k], before[k]) for k in trained)  # it trained


# ---- (b) staleness 1 trains, and the ratio is against the behaviour policy -----------------------------------------

class Recording(TorchBackend):
    """TorchBackend that keeps each rollout with the weights it was sampled from and the thread count it ran with."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def generate(self, model, prompt_ids, params, **kw):
        rollout = super().generate(model, prompt_ids, params, **kw)
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.calls.append((rollout, weights, torch.get_num_threads(), threading.current_thread().name))
        return rollout


class Kept(RL):
    """The RL recipe, keeping its state so the test can read the trainer's weights after each step."""

    def setup(self, accelerator):
        self.state = super().setup(accelerator)
        return self.state


def test_staleness_one_trains_off_policy_against_the_behaviour_log_probs(tiny_model_path, tmp_path):
    # PPO: a value head forces the rollout-time policy pass, which must not replace the behaviour log-probs
    config = pipelined(tiny_model_path, tmp_path, algo="ppo", batch_size=8, num_generations=1, threads=2)
    backend, provider = Recording(), Sevens()
    recipe = Kept(config, provider, backend)
    trainer = {}  # weights version -> the trainer's policy weights

    def keep(step, metrics):
        trainer[step] = copy.deepcopy(recipe.state.net.policy.state_dict())
        trainer["threads"] = torch.get_num_threads()

    trainer[0] = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    try:
        run(recipe, config, [keep])
    finally:
        recipe.close()
    rows = records(tmp_path)
    assert [r["rollout/staleness"] for r in rows] == [0, 1, 1, 1, 1]
    assert [r["rollout/weights_version"] for r in rows] == [0, 0, 1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["policy/loss"])) and "kl/mean_per_seq" in r for r in rows)
    # threads: one each for trainer and generator out of --threads 2; the main thread's count restored after
    assert {(n, name) for _, _, n, name in backend.calls} == {(1, WORKER)} and trainer["threads"] == 1
    assert torch.get_num_threads() == 2
    state, temperature = recipe.state, recipe.state.params.logprob_temperature
    policy = state.net.policy
    assert len(backend.calls) == len(rows) == 5
    for (rollout, weights, _, _), row in zip(backend.calls, rows):
        version = int(row["rollout/weights_version"])  # the generator sampled from exactly those trainer weights
        assert all(torch.equal(weights[k], trainer[version][k]) for k in weights)
        with torch.no_grad():
            current = {k: v.clone() for k, v in policy.state_dict().items()}
            policy.load_state_dict(weights)
            fresh = sequence_logprobs(policy, rollout.input_ids, rollout.attention_mask, rollout.prompt_length,
                                      temperature, rollout.position_ids)
            policy.load_state_dict(current)
        cm = rollout.completion_mask.float()
        torch.testing.assert_close(rollout.logprobs, fresh * cm, atol=1e-5, rtol=0)
    # what the update's ratio divides by: the behaviour log-probs, not the (different) current weights' ones
    old_lp, values, ref_lp = rollout_forward(state, rollout)
    with torch.no_grad():
        now = sequence_logprobs(policy, rollout.input_ids, rollout.attention_mask, rollout.prompt_length,
                                temperature, rollout.position_ids) * cm
    assert torch.equal(old_lp, rollout.logprobs * cm)
    assert not torch.allclose(old_lp, now, atol=1e-4)
    assert values is not None and ref_lp is not None


# ---- (c) exact resume ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_staleness", [1, 2])
def test_an_interrupted_pipelined_run_resumes_exactly(max_staleness, tiny_model_path, tmp_path):
    # staleness 2, interrupted after step 3: step 4's rollout is in flight and step 5's reuses its (version 2)
    # weights, older than the checkpoint's, so the checkpoint must carry the generator's weights too
    kw = dict(max_steps=6, max_staleness=max_staleness, lr_scheduler="cosine")
    train_rl(pipelined(tiny_model_path, tmp_path / "straight", **kw), provider=Sevens())

    def interrupt(step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_rl(pipelined(tiny_model_path, tmp_path / "resumed", **kw), callbacks=[interrupt], provider=Sevens())
    assert not worker_alive()
    saved = torch.load(tmp_path / "resumed" / "checkpoints" / "step-3" / "custom_checkpoint_1.pkl",
                       weights_only=False)
    assert saved["in_flight"][0]["step"] == 4 and ("weights" in saved) == (max_staleness == 2)
    train_rl(pipelined(tiny_model_path, tmp_path / "resumed", **kw), provider=Sevens())
    a, b = load_weights(tmp_path / "straight"), load_weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight, resumed = records(tmp_path / "straight"), records(tmp_path / "resumed")
    assert [r["rollout/weights_version"] for r in resumed] == [r["rollout/weights_version"] for r in straight]
    assert [r["reward/mean"] for r in resumed] == [r["reward/mean"] for r in straight]


class CutShort(Sevens):
    """Ctrl-C twice while step ``at`` scores: the loop stops at once and checkpoints the step before."""

    def __init__(self, at):
        super().__init__()
        self.calls, self.at = 0, at

    def score(self, samples):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt("SIGINT twice")
        return super().score(samples)


def test_a_step_cut_short_after_its_rollout_was_taken_still_resumes_exactly(tiny_model_path, tmp_path):
    # step 4 has taken its rollout and step 5's is being sampled when the stop comes: the step-3 checkpoint must
    # hold step 4's rollout and the sampling RNG right after it, not the worker's later state
    kw = dict(max_steps=6)
    train_rl(pipelined(tiny_model_path, tmp_path / "straight", **kw), provider=Sevens())
    with pytest.raises(KeyboardInterrupt):
        # provider call 1 is the step-0 evaluation, calls 2-4 score steps 1-3
        train_rl(pipelined(tiny_model_path, tmp_path / "resumed", **kw), provider=CutShort(at=5))
    assert json.loads((tmp_path / "resumed" / "checkpoints" / "step-3" / "trainer_state.json").read_text())["step"] == 3
    train_rl(pipelined(tiny_model_path, tmp_path / "resumed", **kw), provider=Sevens())
    a, b = load_weights(tmp_path / "straight"), load_weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- (d) stops, (e) worker errors ------------------------------------------------------------------------------

class Failing(TorchBackend):
    """Generation that raises on its ``fail_at``-th call (a backend's own error, as a server's would be)."""

    def __init__(self, fail_at):
        super().__init__()
        self.calls, self.fail_at = 0, fail_at

    def generate(self, *a, **kw):
        self.calls += 1
        if self.calls == self.fail_at:
            raise ValueError("sampler fell over: CUDA error 42")
        return super().generate(*a, **kw)


def test_a_worker_error_surfaces_in_the_main_loop_with_its_message(tiny_model_path, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="sampler fell over: CUDA error 42") as err:
        train_rl(pipelined(tiny_model_path, tmp_path), provider=Sevens(), backend=Failing(fail_at=3))
    assert "generation worker, sampling step 3" in "".join(err.value.__notes__)
    assert time.monotonic() - t0 < 60 and not worker_alive()
    assert [r["step"] for r in records(tmp_path)] == [1, 2]


def test_a_stop_request_stops_at_a_step_boundary_and_shuts_the_worker_down(tiny_model_path, tmp_path):
    def stop(step, metrics):
        if step == 2:
            raise KeyboardInterrupt("SIGTERM")

    with pytest.raises(KeyboardInterrupt):
        train_rl(pipelined(tiny_model_path, tmp_path, max_steps=50), callbacks=[stop], provider=Sevens())
    assert not worker_alive()
    state = json.loads((tmp_path / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["interrupted"] is True


# ---- a backend holding its own weights (the server protocol) -----------------------------------------------------

class Holding(TorchBackend):
    """A backend that samples from weights it holds, pushed by ``sync_weights`` (what a server backend does)."""

    def __init__(self):
        super().__init__()
        self.model, self.versions = None, []

    def sync_weights(self, model, version):
        self.model = copy.deepcopy(model)  # frozen weights would take another kernel path (last-bit log-probs)
        self.versions.append(version)

    def generate(self, model, prompt_ids, params, **kw):
        return super().generate(self.model, prompt_ids, params, **kw)


def test_a_backend_with_sync_weights_gets_the_weights_pushed_and_the_same_run(tiny_model_path, tmp_path):
    kw = dict(max_steps=5, max_staleness=2)
    train_rl(pipelined(tiny_model_path, tmp_path / "copy", **kw), provider=Sevens())
    holding = Holding()
    train_rl(pipelined(tiny_model_path, tmp_path / "pushed", **kw), provider=Sevens(), backend=holding)
    assert holding.versions == [0, 2]  # schedule(2, 5): versions 0, 0, 0, 2, 2
    a, b = load_weights(tmp_path / "copy"), load_weights(tmp_path / "pushed")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- (f) the command line, and SIGTERM there ----------------------------------------------------------------------

def test_the_cli_trains_pipelined_and_sigterm_stops_it_cleanly(tiny_model_path, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "rewardhub.cli.main", "train", "--algo", "grpo", "--async-rollouts",
           "--max-staleness", "1", "--model", str(tiny_model_path), "--out", str(out), "--max-steps", "2000",
           "--batch-size", "4", "--num-generations", "4", "--max-new-tokens", "6", "--reward", "length",
           "--data-arg", "size=64", "--log-every", "1", "--save-every", "100000", "--eval-every", "0",
           "--eval-size", "4", "--threads", "2", "--completions-every", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("train step 3:"):
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    [checkpoint] = (out / "checkpoints").iterdir()
    step = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
    assert step >= 3
    rows = records(out)
    assert rows[0]["rollout/staleness"] == 0 and {r["rollout/staleness"] for r in rows[1:]} == {1}
