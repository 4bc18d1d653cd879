"""Input a new user gets wrong: each gives a message that names the file, line, byte or number to fix, and the
checks that can come before a model loads do (issue 12, part 4)."""

from __future__ import annotations

import json
import time

import pytest

from rewardhub import hub
from rewardhub.cli.main import build_parser, join_negative_values, main
from rewardhub.data import load_rows
from rewardhub.errors import ConfigError, DataError, ModelLoadError
from rewardhub.models import check_context_length, load_tokenizer, model_context_length
from rewardhub.out_dir import check_out_dir, check_out_file


@pytest.fixture(autouse=True)
def fresh_probe():
    hub.probe.cache_clear()
    yield
    hub.probe.cache_clear()


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if any model or tokenizer is loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    import rewardhub.cli.eval_cmd
    import rewardhub.models
    import rewardhub.recipes.rl

    for module in (rewardhub.models, rewardhub.recipes.rl):
        monkeypatch.setattr(module, "load_model", refuse)
        monkeypatch.setattr(module, "load_tokenizer", refuse)
    monkeypatch.setattr(rewardhub.models, "load_model_and_tokenizer", refuse)
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


def rows_jsonl(n: int) -> list[str]:
    return [json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) for i in range(n)]


# 1. an empty data file ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,content", [("e.jsonl", ""), ("e.json", ""), ("e.csv", ""),
                                          ("blank.jsonl", "\n\n   \n"), ("blank.csv", "\n")])
def test_empty_data_file_says_it_is_empty(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=rf"data file {path} is empty"):
        load_rows(str(path))


def test_empty_data_file_in_the_cli(tmp_path, capsys, no_weights):
    path = tmp_path / "empty.csv"
    path.write_text("")
    assert main(["score", "--reward=exact-match", "--data", str(path), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert f"rewardhub score: error: data file {path} is empty" in capsys.readouterr().err
    header_only = tmp_path / "header.csv"
    header_only.write_text("prompt,completion\n")
    with pytest.raises(DataError, match=rf"data file {header_only} has no rows"):
        load_rows(str(header_only))


# 2. a malformed JSONL line -----------------------------------------------------------------------------------

def test_malformed_jsonl_line_names_file_line_and_json_error(tmp_path, capsys, tiny_model_path, no_weights):
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join([*rows_jsonl(6), '{"prompt": "a" "completion": "b"}']) + "\n")
    with pytest.raises(DataError, match=r"x\.jsonl line 7: not valid JSON: Expecting ',' delimiter \(column 16\)"):
        load_rows(str(path))
    # the RL recipe reads its data first: the message comes before the tokenizer or the weights load
    code = main(["train", "--algo", "grpo", "--model", str(tiny_model_path), "--data", str(path),
                 "--reward=exact-match", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "x.jsonl line 7: not valid JSON: Expecting ',' delimiter (column 16)" in capsys.readouterr().err


def test_feedback_import_shares_the_line_number_helper(tmp_path):
    import rewardhub_feedback.store as store_module
    from rewardhub.data_files import read_jsonl

    assert store_module.read_jsonl is read_jsonl
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n\n{oops\n')
    store = store_module.FeedbackStore(tmp_path / "fb.sqlite")
    with pytest.raises(DataError, match=r"bad\.jsonl line 3: not valid JSON: Expecting property name"):
        store.import_jsonl(path)


# 3. a file that is not UTF-8 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,content,offset,column", [
    ("latin.jsonl", b'{"prompt": "1+1=", "completion": "2"}\n{"prompt": "caf\xe9", "completion": "x"}\n', 53, 16),
    ("latin.csv", b"prompt,completion\ncaf\xe9,x\n", 21, 4),
])
def test_non_utf8_file_names_the_byte_and_how_to_reencode(tmp_path, name, content, offset, column):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_rows(str(path))
    message = str(info.value)
    assert f"{path} is not UTF-8: byte 0xe9 at offset {offset} (line 2, column {column})" in message
    assert f"iconv -f latin1 -t utf-8 {path}" in message


# 4. a lone surrogate in one row ------------------------------------------------------------------------------

def test_lone_surrogate_row_is_refused_with_its_line_for_training(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join([*rows_jsonl(2), '{"prompt": "\\ud800", "completion": "b"}', *rows_jsonl(1)]) + "\n")
    with pytest.raises(DataError, match=r"s\.jsonl line 3: `prompt` holds a lone surrogate .*fix or remove that "
                                        r"line"):
        load_rows(str(path))
    # score goes on: the row is reported, the rest scored (see test_score_reports_bad_rows_and_scores_the_rest)


# 5. --max-length above the model's context -------------------------------------------------------------------

def test_max_length_above_the_context_is_refused_from_the_config_alone(tmp_path, tiny_model_path, no_weights,
                                                                        monkeypatch):
    import rewardhub.tiny_model

    monkeypatch.setattr(rewardhub.tiny_model, "build_tiny_model", lambda *a, **k: pytest.fail("built the model"))
    assert model_context_length("builtin:tiny-llama") == (256, "max_position_embeddings")
    with pytest.raises(ConfigError, match=r"--max-length 10002 is more than the context of builtin:tiny-llama "
                                          r"\(256 tokens, max_position_embeddings in its config\); use --max-length "
                                          r"256 or less"):
        check_context_length("builtin:tiny-llama", 10002)
    check_context_length("builtin:tiny-llama", 256)  # fits
    with pytest.raises(ConfigError, match=rf"--max-length 300 is more than the context of {tiny_model_path} "
                                          r"\(256 tokens"):
        check_context_length(str(tiny_model_path), 300)
    # RL: prompts keep max(1, max_length - max_new_tokens) tokens, then up to max_new_tokens are sampled
    with pytest.raises(ConfigError, match=r"prompt tokens \+ --max-new-tokens 300 = 301 tokens, more than"):
        check_context_length("builtin:tiny-llama", 256, 300, rl=True)
    check_context_length("builtin:tiny-llama", 256, 32, rl=True)


def test_context_length_of_other_architectures(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_positions=64, n_embd=8, n_layer=1, n_head=1).save_pretrained(tmp_path / "gpt2")
    assert model_context_length(str(tmp_path / "gpt2"))[0] == 64
    with pytest.raises(ConfigError, match=r"--max-length 65 is more than .*\(64 tokens"):
        check_context_length(str(tmp_path / "gpt2"), 65)


def test_eval_max_new_tokens_above_the_context_fails_before_loading(tiny_model_path, tmp_path, capsys, no_weights):
    code = main(["eval", "--reward=exact-match", "--model", str(tiny_model_path), "--max-new-tokens", "5000",
                 "--output", str(tmp_path / "e.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "--max-new-tokens 5000 leaves no room for the prompt" in err and "(256 tokens" in err


# 6. a hub id that cannot be reached --------------------------------------------------------------------------

def test_hub_model_id_fails_fast_offline(capsys, tmp_path, no_weights):
    assert hub.offline()  # conftest sets HF_HUB_OFFLINE=1
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        load_tokenizer("nobody-here/made-up-model-xyz")
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "'nobody-here/made-up-model-xyz' is not a local directory and was not found in the local" in message
    assert "HF_HUB_OFFLINE=1 is set" in message and "local model directory" in message
    assert "download the model first" in message
    start = time.monotonic()
    code = main(["eval", "--reward=exact-match", "--model", "nobody-here/made-up-model-xyz",
                 "--output", str(tmp_path / "e.jsonl")])
    assert code == 2 and time.monotonic() - start < 5
    assert "HF_HUB_OFFLINE=1 is set" in capsys.readouterr().err


def test_hub_model_id_fails_fast_when_the_hub_is_unreachable(monkeypatch):
    from huggingface_hub import HfApi

    def unreachable(self, repo_id, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr(HfApi, "model_info", unreachable)
    with pytest.raises(ModelLoadError, match=r"'org/model' is not a local directory or in the local Hugging Face "
                                             r"cache, and the Hub cannot be reached \(OSError: .*Name or service"):
        check_context_length("org/model", 128)


def test_hub_dataset_id_fails_fast_offline():
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        load_rows("nobody-here/made-up-data-xyz")
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "cannot load data 'nobody-here/made-up-data-xyz'" in message and "HF_HUB_OFFLINE=1 is set" in message
    assert "hf download nobody-here/made-up-data-xyz --repo-type dataset" in message


# 7. negative numbers as flag values --------------------------------------------------------------------------

@pytest.mark.parametrize("flags,expected", [
    (["--lr", "-1e-3"], "lr must be > 0, got -0.001"),
    (["--kl-coef", "-0.1"], "kl_coef must be >= 0, got -0.1"),
    (["--no-resume", "--lr", "-1e-3", "--max-steps", "-5"], "max_steps must be >= 1, got -5"),
])
def test_negative_numbers_are_read_as_values(flags, expected, capsys, no_weights):
    assert main(["train", *flags]) == 2
    err = capsys.readouterr().err
    assert expected in err and "expected one argument" not in err


def test_negative_number_joining_keeps_other_tokens():
    parser = build_parser()
    argv = join_negative_values(parser, ["train", "--seed", "-1", "--resume", "--lr", "1e-4", "--top-k", "-2"])
    assert argv == ["train", "--seed=-1", "--resume", "--lr", "1e-4", "--top-k=-2"]
    args = parser.parse_args(argv)
    assert (args.seed, args.resume, args.lr) == ("-1", True, "1e-4")
    # a number after an option that takes no value is not swallowed: argparse still reports it
    assert join_negative_values(parser, ["train", "--resume", "-1"]) == ["train", "--resume", "-1"]
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--resume", "-1"])
    assert join_negative_values(parser, ["train", "--", "--lr", "-1"]) == ["train", "--", "--lr", "-1"]


# 8. score reports bad rows without refusing the rest ---------------------------------------------------------

def test_score_reports_bad_rows_and_scores_the_rest(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([
        json.dumps({"prompt": "1+1=", "completion": "2", "answer": "2"}),
        json.dumps({"prompt": "1+2=", "answer": "3"}),                             # no completion
        json.dumps({"prompt": "1+3=", "completion": {"text": "4"}, "answer": "4"}),  # wrong type
        '{"prompt": "\\ud800", "completion": "5", "answer": "5"}',                   # lone surrogate
        '{"prompt": "1+5=" "completion": "6"}',                                       # not JSON
        "",
        json.dumps({"prompt": "1+6=", "completion": "8", "answer": "7"}),
    ]) + "\n")
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--reward=exact-match", "--data", str(path), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["index"], r["line"], r["status"]) for r in rows] == [
        (0, 1, "ok"), (1, 2, "error"), (2, 3, "error"), (3, 4, "error"), (4, 5, "error"), (5, 7, "wrong")]
    assert "no `completion`" in rows[1]["detail"] and "must be a string, got dict" in rows[2]["detail"]
    assert "lone surrogate" in rows[3]["detail"] and "not valid JSON" in rows[4]["detail"]
    assert rows[1]["reward"] is None
    printed = capsys.readouterr().out
    assert "4 of 6 rows could not be scored" in printed
    assert "row 1 (line 2), row 2 (line 3), row 3 (line 4), row 4 (line 5)" in printed
    # the same for data that is not JSONL: the bad row is counted by its index
    csv = tmp_path / "d.csv"
    csv.write_text("prompt,completion,answer\n1+1=,2,2\n1+2=,,3\n")
    assert main(["score", "--reward=exact-match", "--data", str(csv), "--output", str(out)]) == 0
    assert "1 of 2 rows could not be scored" in capsys.readouterr().out


# 9. an unwritable or file-valued --out -----------------------------------------------------------------------

def test_check_out_dir(tmp_path):
    a_file = tmp_path / "some_file.txt"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match=rf"--out {a_file} is a file, not a directory"):
        check_out_dir(a_file)
    with pytest.raises(ConfigError, match=rf"cannot create --out {a_file}/run: {a_file} is a file"):
        check_out_dir(a_file / "run")
    with pytest.raises(ConfigError, match=r"cannot create --out /proc/x/run: No such file or directory"):
        check_out_dir("/proc/x/run")
    check_out_dir(tmp_path)  # exists, writable
    check_out_dir(tmp_path / "new" / "run")  # can be created; the check creates nothing that stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["some_file.txt"]


def test_check_out_dir_permission_denied(tmp_path, monkeypatch):
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    with pytest.raises(ConfigError, match=rf"cannot create --out {tmp_path}/run: Permission denied"):
        check_out_dir(tmp_path / "run")


def test_output_file_is_checked_before_scoring_or_loading(tmp_path, capsys, no_weights):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"completion": "2", "answer": "2"}) + "\n")
    assert main(["score", "--reward=exact-match", "--data", str(data), "--output", str(tmp_path)]) == 2
    assert f"--output {tmp_path} is a directory" in capsys.readouterr().err
    assert main(["eval", "--reward=exact-match", "--output", "/proc/x/e.jsonl"]) == 2
    assert "cannot create --output /proc/x/e.jsonl: No such file or directory" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        check_out_file(data / "o.jsonl")
