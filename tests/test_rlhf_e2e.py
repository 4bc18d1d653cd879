"""RLHF and DPO end to end on a rule the test knows: "more 7s is better".

Preference pairs come from the rule; a reward model learns it from pairs alone; PPO against that reward
model, online DPO ranked by it, and offline DPO on the pairs must each move the tiny policy toward the rule,
measured on held-out prompts both by the reward model and by the rule itself.
"""

import json
import random

import pytest

from rewardhub.config import DPOConfig, RewardModelConfig, RLConfig
from rewardhub.data import load_rows
from rewardhub.evaluation import generate_completions
from rewardhub.models import load_model_and_tokenizer
from rewardhub.recipes.dpo import train_dpo
from rewardhub.recipes.reward_model import train_reward_model
from rewardhub.recipes.rl import train_rl

COMMON = dict(lr_scheduler="constant", warmup_ratio=0.0, save_every=0, log_every=10, threads=1, resume=False)


def sevens_per_completion(model_path) -> float:
    """The rule's own score on held-out prompts: mean number of 7s in greedy completions."""
    model, tok = load_model_and_tokenizer(str(model_path))
    rows = load_rows("arithmetic:test").select(range(32))
    _, completions = generate_completions(model, tok, rows, 6)
    return sum(c.count("7") for c in completions) / len(completions)


def rule_pairs(n, seed):
    rng = random.Random(seed)

    def digits(n7):
        chars = [rng.choice("012345689") for _ in range(6)]
        for i in rng.sample(range(6), n7):
            chars[i] = "7"
        return "".join(chars)

    rows = []
    for _ in range(n):
        few = rng.randrange(0, 4)
        prompt = f"{rng.randrange(100)}+{rng.randrange(100)}="
        rows.append({"prompt": prompt, "chosen": digits(rng.randrange(few + 1, 7)), "rejected": digits(few)})
    return rows


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    for name, n, seed in (("train", 2000, 0), ("test", 200, 1)):
        (root / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rule_pairs(n, seed)))
    return root


@pytest.fixture(scope="module")
def reward_model(pairs, tiny_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm")
    final = train_reward_model(RewardModelConfig(
        model=str(tiny_model_path), data=str(pairs / "train.jsonl"), eval_data=str(pairs / "test.jsonl"),
        out=str(out), max_steps=300, lr=1e-3, batch_size=32, eval_every=0, **COMMON))
    return out / "model", final


def test_reward_model_learns_the_rule(reward_model):
    _, final = reward_model
    assert final["accuracy"] >= 0.9  # held-out pairwise accuracy


def test_ppo_against_the_reward_model_raises_its_score_and_the_rule(reward_model, tiny_model_path, tmp_path):
    path, _ = reward_model
    final = train_rl(RLConfig(
        algo="ppo", model=str(tiny_model_path), data="arithmetic", data_args={"size": 500}, reward="reward-model",
        reward_args={"path": str(path)}, max_steps=40, batch_size=16, max_new_tokens=6, lr=3e-3, eval_size=32,
        out=str(tmp_path), **COMMON))
    assert final["after/reward_mean"] > final["before/reward_mean"] + 1.0  # normalised RM score
    assert sevens_per_completion(tmp_path / "model") > sevens_per_completion(tiny_model_path) + 2.0


def test_online_dpo_ranked_by_the_reward_model_moves_toward_the_rule(reward_model, tiny_model_path, tmp_path):
    path, _ = reward_model
    final = train_dpo(DPOConfig(
        pairs="online", model=str(tiny_model_path), data="arithmetic", data_args={"size": 500}, reward="reward-model",
        reward_args={"path": str(path)}, max_steps=40, batch_size=16, num_generations=4, max_new_tokens=6,
        eval_max_new_tokens=6, lr=3e-3, eval_size=32, out=str(tmp_path), **COMMON))
    assert final["reward_mean"] > final["initial/reward_mean"] + 1.0
    assert sevens_per_completion(tmp_path / "model") > sevens_per_completion(tiny_model_path) + 1.0


def test_offline_dpo_raises_held_out_preference_accuracy(pairs, tiny_model_path, tmp_path):
    final = train_dpo(DPOConfig(
        model=str(tiny_model_path), data=str(pairs / "train.jsonl"), eval_data=str(pairs / "test.jsonl"),
        max_steps=100, batch_size=16, lr=1e-3, eval_size=200, out=str(tmp_path), **COMMON))
    assert final["rewards/accuracies"] >= 0.9 > final["initial/rewards/accuracies"]
    assert final["logps/accuracy"] > final["initial/logps/accuracy"]
