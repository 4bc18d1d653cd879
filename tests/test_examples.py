"""The examples run as documented (with fewer steps), and the default job runs in a quick mode."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rewardhub.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def test_custom_verifier_example(tmp_path, fresh_plugins):
    out = tmp_path / "scores.jsonl"
    code = main(["score", "--reward=verifier", "--verifier", str(ROOT / "examples/custom_verifier/checks.py"),
                 "--data", str(ROOT / "examples/custom_verifier/completions.jsonl"), "--output", str(out)])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["reward"], r["status"]) for r in rows] == [
        (1.0, "ok"), (0.0, "wrong"), (1.0, "ok"), (0.0, "wrong"), (1.0, "ok"), (1.0, "ok")]


def test_grpo_custom_reward_example(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "examples/grpo_custom_reward.py"), "--steps", "25",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("held-out reward"))
    before, after = (float(w) for w in line.replace(",", "").split() if w.replace(".", "").isdigit())
    assert after > before + 1.0


def test_default_train_job_quick_mode(tmp_path, capsys):
    out = tmp_path / "reft"
    code = main(["train", "--reward=verifier", "--sft-warmup-steps", "20", "--max-steps", "3", "--eval-size", "8",
                 "--out", str(out), "--threads", "1"])
    assert code == 0
    assert (out / "sft-warmup" / "model" / "config.json").exists()
    text = " ".join(capsys.readouterr().out.split())
    assert "before/accuracy" in text and "after/accuracy" in text
    assert f"stage 1/2: SFT warm-up, 20 steps on arithmetic-cot -> {out / 'sft-warmup'}" in text
    assert "stage 2/2: GRPO against verifier, 3 steps" in text
    assert "held-out accuracy on 8 problems: before RL" in text and "after RL" in text
    assert f"metrics: {out / 'metrics.jsonl'}" in text
    assert (out / "model" / "config.json").exists()
    # the warm-up was scored with the task's reward, on the same scale as RL's before/after
    warm = [json.loads(x) for x in (out / "sft-warmup" / "metrics.jsonl").read_text().splitlines()]
    assert warm[-1]["kind"] == "eval" and "accuracy" in warm[-1] and warm[-1]["n"] == 8


def test_reft_vs_sft_example_quick(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "examples/reft_vs_sft.py"), "--quick",
                             "--out", str(tmp_path / "rvs")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = json.loads((tmp_path / "rvs" / "result.json").read_text())
    assert {(r["setting"], r["seed"]) for r in runs} == {("imperfect", 0), ("clean", 0)}
    for r in runs:  # both arms start from the same untrained model; SFT-only trains for ReFT's time
        assert r["sft_only"]["start_model"] == r["warmup"]["start_model"] == "builtin:tiny-llama"
        assert r["sft_only"]["train_s"] <= r["reft"]["train_s"] * 1.5 + 5
    assert "imperfect: ReFT - SFT only" in result.stdout and "| clean | 0 |" in result.stdout
    assert (tmp_path / "rvs" / "reft_vs_sft.png").stat().st_size > 10_000


def test_rlaif_judge_example_runs_the_loop_against_a_served_judge(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "examples/rlaif_judge.py"), "--steps", "2",
                             "--out", str(tmp_path / "rlaif")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "provider/judge/requests=" in result.stdout
    rows = [json.loads(x) for x in (tmp_path / "rlaif" / "train" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) == 2 and train[-1]["provider/judge/requests"] > 0


def test_human_feedback_dpo_example_quick(tmp_path):
    import os

    env = {**os.environ, "STEPS": "20", "PAIRS": "200", "OUT": str(tmp_path / "hf")}
    result = subprocess.run(["bash", str(ROOT / "examples/human_feedback_dpo.sh")], capture_output=True, text=True,
                            timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "held-out pairs where the policy prefers the chosen reply" in result.stdout
    assert (tmp_path / "hf" / "dpo" / "model" / "config.json").exists()


def test_code_verifier_example_scores_as_documented(tmp_path):
    import shutil

    import pytest

    if not shutil.which("bwrap"):
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--reward=verifier", "--data", str(ROOT / "examples/code_verifier/rows.jsonl"),
                 "--output", str(out)]) == 0
    rewards = [json.loads(line)["reward"] for line in out.read_text().splitlines()]
    assert rewards == [1.0, 0.5, 1.0, 1.0, 0.0, 0.0, 1.0, 0.1]  # the two hostile rows earn nothing


def test_rejection_sampling_recipe_example_runs_in_the_loop(tmp_path):
    """A recipe written outside rewardhub (examples/rejection_sampling.py) gets the loop's eval, logs and model."""
    out = tmp_path / "rft"
    result = subprocess.run([sys.executable, str(ROOT / "examples/rejection_sampling.py"), "--warmup-steps", "20",
                             "--steps", "3", "--eval-size", "8", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "held-out accuracy on 8 problems:" in result.stdout and "before RFT" in result.stdout
    rows = [json.loads(x) for x in (out / "rft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 3]  # before and after, from the loop
    assert all("accepted" in r for r in rows if r["kind"] == "train")
    assert (out / "rft" / "model" / "config.json").exists()


@pytest.mark.slow
def test_grpo_on_a_server_example_trains_against_rewardhub_serve_with_lora_sync(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "examples/grpo_on_a_server.py"), "--steps", "2", "--lora",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "after training, greedy completions match" in result.stdout
    train = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation/logprobs_recomputed"] for r in train if r["kind"] == "train"][-1] == 1.0
