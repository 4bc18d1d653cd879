"""A run directory belongs to one run: run.json, refusals that name what differs, a lock, resume messages."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import load_weights, records

from rewardhub.cli.main import main
from rewardhub.config import DPOConfig, RewardModelConfig, RLConfig, SFTConfig
from rewardhub.errors import ConfigError, RunDirectoryError
from rewardhub.run_dir import claim, differences, settle


def sft(out, **kw) -> SFTConfig:
    return SFTConfig(**{"out": str(out), "max_steps": 4, **kw})


def tree_digest(path) -> dict[str, str]:
    """Every file under ``path`` and a hash of its bytes: to show a refused command changed nothing."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


def make_run(out) -> None:
    """What a run leaves: run.json, a checkpoint, a metrics row."""
    settle(out, sft(out))
    (out / "checkpoints" / "step-2").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 2, "kind": "train", "loss": 1.0}\n')


# ---- unit: what is compared, what is refused -------------------------------------------------------------

def test_each_command_has_its_own_default_directory():
    assert SFTConfig().out == "runs/sft" and DPOConfig().out == "runs/dpo"
    assert RLConfig().out == "runs/ppo" and RLConfig(algo="grpo").out == "runs/grpo"
    assert RewardModelConfig().out == "runs/reward-model" and SFTConfig(out="x").out == "x"


def test_differences_leave_out_the_fields_that_only_watch_a_run():
    then = {"lr": 0.001, "log_every": 10, "save_every": 500, "model": "a", "gone": 1}
    now = {"lr": 0.002, "log_every": 1, "save_every": 5, "model": "a", "new": 2}
    assert differences(then, now) == [("lr", 0.001, 0.002)]


def test_a_rerun_with_the_same_settings_is_accepted_and_the_record_kept(tmp_path):
    make_run(tmp_path)
    started = json.loads((tmp_path / "run.json").read_text())["started"]
    record = settle(tmp_path, sft(tmp_path, log_every=1, threads=1))  # watch-only changes are fine
    assert record["started"] == started and record["kind"] == "sft"
    assert set(record["versions"]) >= {"rewardhub", "torch", "transformers"}


def test_a_changed_setting_is_refused_with_the_field_and_the_ways_out(tmp_path):
    make_run(tmp_path)
    with pytest.raises(RunDirectoryError) as info:
        settle(tmp_path, sft(tmp_path, lr=0.002, max_steps=8))
    text = str(info.value)
    assert "lr: 0.001 then, 0.002 now" in text and "max_steps: 4 then, 8 now" in text
    assert "last checkpoint step 2 of 4" in text
    assert "--out" in text and "--overwrite" in text and "--force-resume" in text
    # --force-resume continues and records what changed
    record = settle(tmp_path, sft(tmp_path, lr=0.002, max_steps=8, force_resume=True))
    assert record["changes"][-1]["fields"] == {"lr": [0.001, 0.002], "max_steps": [4, 8]}
    assert record["config"]["lr"] == 0.002


def test_another_kind_of_run_is_refused_even_with_force_resume(tmp_path):
    make_run(tmp_path)
    for force in (False, True):
        with pytest.raises(RunDirectoryError, match=r"holds a sft run .* this is a dpo run"):
            settle(tmp_path, DPOConfig(out=str(tmp_path), force_resume=force))


def test_no_resume_and_unrecorded_runs_are_refused_and_overwrite_starts_over(tmp_path):
    make_run(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match="--no-resume would overwrite it"):
        settle(tmp_path, sft(tmp_path, resume=False))
    (tmp_path / "run.json").unlink()
    with pytest.raises(RunDirectoryError, match=r"no run\.json records its settings"):
        settle(tmp_path, sft(tmp_path))
    (tmp_path / "run.json").write_text("")  # torn
    with pytest.raises(RunDirectoryError, match=r"run\.json cannot be read"):
        settle(tmp_path, sft(tmp_path))
    settle(tmp_path, DPOConfig(out=str(tmp_path), overwrite=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "run.json"]  # only the run's files went
    assert json.loads((tmp_path / "run.json").read_text())["kind"] == "dpo"


def test_a_run_that_stopped_before_it_trained_does_not_block_a_corrected_rerun(tmp_path):
    settle(tmp_path, sft(tmp_path, model="/typo"))  # run.json written, then the model failed to load
    settle(tmp_path, sft(tmp_path, model="builtin:tiny-llama"))


def test_a_resumed_run_under_other_library_versions_is_warned_about(tmp_path, caplog):
    make_run(tmp_path)
    record = json.loads((tmp_path / "run.json").read_text())
    record["versions"]["torch"] = "1.0.0"
    (tmp_path / "run.json").write_text(json.dumps(record))
    with caplog.at_level("WARNING"):
        settle(tmp_path, sft(tmp_path))
    assert "started with torch 1.0.0" in caplog.text


def test_a_file_or_unwritable_out_is_refused(tmp_path):
    file = tmp_path / "f.txt"
    file.write_text("x")
    with pytest.raises(ConfigError, match="is a file"), claim(sft(file)):
        pass
    with pytest.raises(ConfigError, match="cannot create"), claim(sft(file / "run")):
        pass


# ---- the lock ---------------------------------------------------------------------------------------------

HOLDER = """
import sys, time
from rewardhub.config import SFTConfig
from rewardhub.run_dir import claim
with claim(SFTConfig(out=sys.argv[1])):
    print("claimed", flush=True)
    time.sleep(60)
"""


def test_a_second_process_cannot_use_a_directory_in_use_and_a_killed_holder_frees_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(RunDirectoryError, match=rf"in use by another rewardhub process \(pid {holder.pid}"), \
                claim(sft(tmp_path)):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)  # dies without cleaning up: the OS drops its lock
        holder.wait(timeout=30)
    with claim(sft(tmp_path)), claim(sft(tmp_path, lr=5.0)):  # a nested claim (a command's stages): not re-checked
        pass


# ---- end to end through the CLI ---------------------------------------------------------------------------

def test_sft_then_dpo_into_one_directory_refuses_and_loses_nothing(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "x"
    common = ["--model", str(tiny_model_path), "--out", str(out), "--threads", "1"]
    assert main(["sft", *common, "--max-steps", "4", "--batch-size", "8", "--eval-size", "4",
                 "--data-arg", "size=64"]) == 0
    before = tree_digest(out)
    capsys.readouterr()
    t0 = time.monotonic()
    code = main(["train", "--algo", "dpo", *common, "--max-steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "holds a sft run" in err and "this is a dpo run" in err and "--overwrite" in err
    assert time.monotonic() - t0 < 5  # refused before any model or data loaded
    assert tree_digest(out) == before  # the SFT model, checkpoints and metrics are untouched
    # a changed flag on the same command: refused, naming the field
    code = main(["sft", *common, "--max-steps", "4", "--batch-size", "8", "--eval-size", "4",
                 "--data-arg", "size=64", "--lr", "0.01"])
    err = capsys.readouterr().err
    assert code == 2 and "lr: 0.001 then, 0.01 now" in err
    assert tree_digest(out) == before


def test_a_rerun_says_where_it_resumes_and_metrics_hold_one_history(tiny_model_path, tmp_path, capsys):
    from rewardhub.recipes.sft import train_sft

    out = tmp_path / "r"
    cfg = dict(model=str(tiny_model_path), data_args={"size": 64}, out=str(out), max_steps=6, batch_size=8,
               log_every=1, save_every=2, eval_every=0, eval_size=4, eval_max_new_tokens=4, threads=1)

    def interrupt(step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sft(SFTConfig(**cfg), callbacks=[interrupt])  # step 3 checkpointed on the interrupt
    with open(out / "metrics.jsonl", "a") as f:  # a row an attempt logged after its last checkpoint
        f.write('{"step": 5, "kind": "train", "loss": 9.0}\n')
    capsys.readouterr()
    train_sft(SFTConfig(**{**cfg, "save_every": 3}))  # a watch-only change is accepted
    shown = capsys.readouterr().out
    assert f"resuming from step 3 of 6 ({out / 'checkpoints' / 'step-3'})" in shown
    assert [r["step"] for r in records(out)] == [1, 2, 3, 4, 5, 6]  # the torn attempt's step-5 row is gone
    assert records(out)[4]["loss"] != 9.0


def test_sigterm_checkpoints_the_finished_steps_and_the_rerun_resumes(tiny_model_path, tmp_path):
    out = tmp_path / "term"
    cmd = [sys.executable, "-m", "rewardhub.cli.main", "sft", "--model", str(tiny_model_path), "--out", str(out),
           "--max-steps", "2000", "--batch-size", "8", "--eval-size", "4", "--eval-max-new-tokens", "4",
           "--data-arg", "size=64", "--log-every", "1", "--save-every", "100000", "--threads", "1",
           "--lr-scheduler", "constant", "--warmup-ratio", "0"]  # the update does not depend on --max-steps
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # wait until a few steps are done
            if line.startswith("train step 3:"):
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted; finished steps are checkpointed" in err
    [checkpoint] = (out / "checkpoints").iterdir()
    step = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
    assert step >= 3 and json.loads((checkpoint / "trainer_state.json").read_text())["interrupted"] is True
    # whole steps only: the checkpoint's weights are those of a run that stopped there by itself
    from safetensors.torch import load_file

    from rewardhub.recipes.sft import train_sft

    straight = tmp_path / "straight"
    train_sft(SFTConfig(model=str(tiny_model_path), out=str(straight), max_steps=step, batch_size=8, eval_size=4,
                        eval_max_new_tokens=4, data_args={"size": 64}, save_every=100000, threads=1,
                        lr_scheduler="constant", warmup_ratio=0.0))
    import torch

    resumed, finished = load_file(str(checkpoint / "model.safetensors")), load_weights(straight)
    for key, value in finished.items():
        torch.testing.assert_close(resumed.get(key, resumed.get(f"model.{key}")), value)
