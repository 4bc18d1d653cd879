"""The `rewardhub` command: help, errors (exit 2 with a message), score, eval and sft paths."""

import json

import pytest

from rewardhub.cli.main import main


@pytest.mark.parametrize("command", ["plugins", "sft", "train", "score", "eval"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: rewardhub" in capsys.readouterr().out


def test_train_help_documents_the_reward_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--reward ", "--reward-arg", "--algo", "--model", "--data", "--config", "--out"):
        assert flag in out


def test_unknown_reward_fails_before_the_model_is_loaded(capsys):
    code = main(["train", "--reward=verifer", "--model", "/definitely/not/a/model"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown reward 'verifer'" in err and "exact-match" in err
    assert "/definitely/not/a/model" not in err


def test_bad_inputs_exit_2_with_a_message(tmp_path, capsys):
    assert main(["sft", "--model", str(tmp_path / "missing"), "--max-steps", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [oops\n")
    assert main(["sft", "--config", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["sft", "--max-steps", "zero"]) == 2
    assert "'max_steps'" in capsys.readouterr().err
    assert main(["train", "--reward=length", "--reward-arg", "scale=huge"]) == 2
    assert "not a number" in capsys.readouterr().err


def test_score_writes_every_row_and_a_summary(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "1+1=", "completion": "2", "answer": "2"},
        {"prompt": "1+2=", "completion": "4", "answer": "3"},
        {"prompt": "1+3=", "completion": "", "answer": "4"},
    ]))
    out_file = tmp_path / "scores.jsonl"
    assert main(["score", "--reward=exact-match", "--data", str(data), "--output", str(out_file)]) == 0
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [(r["reward"], r["status"]) for r in rows] == [(1.0, "ok"), (0.0, "wrong"), (0.0, "no_answer")]
    out = capsys.readouterr().out
    assert "accuracy" in out and "0.3333" in out
    missing = tmp_path / "m.jsonl"
    missing.write_text('{"prompt": "x"}\n')
    assert main(["score", "--reward=exact-match", "--data", str(missing)]) == 2
    assert "completion" in capsys.readouterr().err


def test_eval_generates_and_scores(tiny_model_path, tmp_path, capsys):
    out_file = tmp_path / "eval.jsonl"
    code = main(["eval", "--reward=exact-match", "--model", str(tiny_model_path), "--data", "arithmetic:test",
                 "--limit", "8", "--max-new-tokens", "4", "--output", str(out_file)])
    assert code == 0
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(rows) == 8 and all(r["prompt"].endswith("=") for r in rows)
    assert "accuracy" in capsys.readouterr().out


def test_sft_command_trains_and_saves(tiny_model_path, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {tiny_model_path}\ndata_args:\n  size: 64\nbatch_size: 8\neval_size: 8\nthreads: 1\n")
    code = main(["sft", "--config", str(cfg), "--max-steps", "2", "--out", str(tmp_path / "run"),
                 "--eval-max-new-tokens", "3"])
    assert code == 0
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    assert "accuracy" in capsys.readouterr().out


def test_a_flag_that_does_not_apply_to_the_algorithm_is_an_error(capsys):
    assert main(["train", "--algo", "dpo", "--ppo-epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "'ppo_epochs'" in err and "DPOConfig" in err
