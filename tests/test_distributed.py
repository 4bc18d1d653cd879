"""Training goes through accelerate: two CPU processes (torchrun, gloo) train exactly like one process.

The invariant: 2 processes x micro-batch 8 must produce the same weights as 1 process x micro-batch 16,
because each optimizer step reads the same global rows and averages the loss over the same tokens, and the
learning-rate schedule follows optimizer steps whatever the process count.
"""

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file


def rewardhub_cli(args, processes, cwd):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_port", str(29500 + os.getpid() % 1000)] if processes > 1 else [sys.executable]
    result = subprocess.run([*launcher, "-m", "rewardhub.cli.main", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def weights(out):
    return load_file(str(out / "model" / "model.safetensors"))


def assert_two_processes_train_like_one(common, one_batch, tmp_path):
    """``common`` on 1 process with micro-batch ``one_batch``, then on 2 with half of it: the same weights."""
    rewardhub_cli([*common, "--batch-size", str(one_batch), "--out", str(tmp_path / "one")], 1, tmp_path)
    rewardhub_cli([*common, "--batch-size", str(one_batch // 2), "--out", str(tmp_path / "two")], 2, tmp_path)
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=0, atol=1e-5)


def test_two_processes_train_exactly_like_one(tiny_model_path, tmp_path):
    common = ["sft", "--model", str(tiny_model_path), "--data-arg", "size=256", "--max-steps", "4",
              "--eval-size", "8", "--save-every", "2", "--eval-max-new-tokens", "3"]
    assert_two_processes_train_like_one(common, 16, tmp_path)
    assert (tmp_path / "two" / "checkpoints" / "step-4" / "trainer_state.json").exists()


def test_rl_runs_on_two_processes(tiny_model_path, tmp_path):
    rewardhub_cli(["train", "--algo", "grpo", "--reward", "exact-match", "--model", str(tiny_model_path),
                   "--data-arg", "size=64", "--max-steps", "2", "--batch-size", "2", "--num-generations", "2",
                   "--max-new-tokens", "4", "--eval-size", "4", "--out", str(tmp_path / "grpo")], 2, tmp_path)
    assert (tmp_path / "grpo" / "model" / "config.json").exists()


def test_pipelined_rl_on_two_processes_matches_the_synchronous_loop(tiny_model_path, tmp_path):
    """--async-rollouts under DDP: each process runs its own generation worker. With --max-staleness 0 (no
    overlap) it must give the synchronous two-process run's weights exactly; with 1 it overlaps and finishes."""
    common = ["train", "--algo", "grpo", "--reward", "length", "--model", str(tiny_model_path), "--data-arg",
              "size=64", "--max-steps", "3", "--batch-size", "2", "--num-generations", "4", "--max-new-tokens", "6",
              "--temperature", "1.0", "--eval-size", "0", "--threads", "1", "--seed", "3"]  # one thread each:
    # the same reduction order in both loops, so the weights can be compared bit for bit
    rewardhub_cli([*common, "--out", str(tmp_path / "sync")], 2, tmp_path)
    rewardhub_cli([*common, "--async-rollouts", "--max-staleness", "0", "--out", str(tmp_path / "s0")], 2, tmp_path)
    rewardhub_cli([*common, "--async-rollouts", "--max-staleness", "1", "--out", str(tmp_path / "s1")], 2, tmp_path)
    sync, s0, s1 = (weights(tmp_path / name) for name in ("sync", "s0", "s1"))
    assert any(not torch.equal(sync[k], load_file(str(tiny_model_path / "model.safetensors"))[k]) for k in sync)
    for key in sync:
        torch.testing.assert_close(s0[key], sync[key], rtol=0, atol=0)
    assert any(not torch.equal(s1[key], sync[key]) for key in sync)  # staleness 1 did train off-policy


def test_reward_model_on_two_processes_trains_exactly_like_one(tiny_model_path, tmp_path):
    """Reward-model training scores each micro-batch as several length groups (several forwards before one
    backward); under DDP that must still give one process's weights (2 x 4 pairs against 1 x 8)."""
    import json

    from rewardhub.batching import length_groups

    lengths = [3, 40, 5, 60, 8, 30, 4, 50]  # varied, so each micro-batch is split into groups
    rows = [{"prompt": f"{i}+{i}=", "chosen": "7" * lengths[i % 8], "rejected": "1" * lengths[(i + 3) % 8]}
            for i in range(64)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seqs = [[0] * len(r["chosen"]) for r in rows[:4]] + [[0] * len(r["rejected"]) for r in rows[:4]]
    assert len(length_groups(range(8), seqs, length=len)) > 1
    common = ["train-rm", "--model", str(tiny_model_path), "--data", str(data), "--max-steps", "3",
              "--eval-size", "0", "--calibration-size", "8"]
    assert_two_processes_train_like_one(common, 8, tmp_path)
