"""Configs (flags, YAML) and data loading (files, formats, column maps, bad rows)."""

import argparse
import json

import pytest

from rewardhub.config import SFTConfig, add_flags, build_config, load_config
from rewardhub.data import detect_format, load_rows, prompt_and_completion, render_prompt, require_columns
from rewardhub.errors import ConfigError, DataError
from rewardhub.options import coerce
from rewardhub.testing import build_tokenizer


def parse(argv):
    parser = argparse.ArgumentParser()
    add_flags(parser, SFTConfig)
    return parser.parse_args(argv)


def test_coerce():
    assert coerce("3", int) == 3 and coerce("0.5", float) == 0.5 and coerce("no", bool) is False
    assert coerce("none", int | None) is None and coerce("a,b", list[str]) == ["a", "b"]
    for value, annotation in [("3.5", int), ("x", float), ("maybe", bool)]:
        with pytest.raises(ValueError):
            coerce(value, annotation)


def test_yaml_then_flags_override(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("max-steps: 7\nlr: 0.01\ndata_args:\n  digits: 3\n")
    cfg = load_config(SFTConfig, parse(["--config", str(cfg_file), "--lr", "0.5", "--data-arg", "n_ops=2"]))
    assert cfg.max_steps == 7 and cfg.lr == 0.5 and cfg.data_args == {"n_ops": "2"}
    assert load_config(SFTConfig, parse(["--config", str(cfg_file)])).data_args == {"digits": 3}
    assert load_config(SFTConfig, parse(["--no-resume"])).resume is False


def test_config_errors_are_collected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(SFTConfig, parse(["--config", str(bad)]))
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(SFTConfig, parse(["--config", str(not_mapping)]))
    with pytest.raises(ConfigError) as err:
        build_config(SFTConfig, {"max_steps": "ten", "learnin_rate": 1, "batch_size": 0})
    text = str(err.value)  # (learning_rate itself is TRL's name for lr: tests/test_trl_aliases.py)
    assert "'max_steps'" in text and "unknown option 'learnin_rate'" in text
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        build_config(SFTConfig, {"batch_size": 0})


ROWS = [{"prompt": "1+1=", "completion": "2"}, {"prompt": "2+2=", "completion": "4"}]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_load_files_of_every_kind(tmp_path, suffix):
    import datasets

    path = tmp_path / f"data{suffix}"
    ds = datasets.Dataset.from_list(ROWS)
    {".jsonl": lambda: ds.to_json(path), ".json": lambda: path.write_text(json.dumps(ROWS)),
     ".csv": lambda: ds.to_csv(path), ".parquet": lambda: ds.to_parquet(path)}[suffix]()
    rows = load_rows(str(path))
    assert rows["prompt"] == ["1+1=", "2+2="] and detect_format(rows.column_names) == "prompt_completion"


def test_directories_tasks_and_column_map(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"question": "q", "reply": "r"}]).save_to_disk(tmp_path / "saved")
    rows = load_rows(str(tmp_path / "saved"), column_map={"question": "prompt", "reply": "completion"})
    assert rows.column_names == ["prompt", "completion"]
    assert len(load_rows("arithmetic:test", task_args={"size": "10"})) == 10
    with pytest.raises(DataError, match="lacks"):
        load_rows(str(tmp_path / "saved"), column_map={"nope": "prompt"})
    with pytest.raises(DataError, match="only for registered tasks"):
        load_rows(str(tmp_path / "saved"), task_args={"digits": "3"})
    with pytest.raises(DataError, match="does not exist"):
        load_rows("./missing.jsonl")
    with pytest.raises(DataError, match="cannot load data"):
        load_rows("some-org/not-cached-anywhere")


def test_missing_column_names_the_row_and_its_columns(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n{"prompt": "d", "completion": ""}\n')
    rows = load_rows(str(path))
    with pytest.raises(DataError) as err:
        require_columns(rows, ["prompt", "completion"], "SFT")
    assert "row 1" in str(err.value) and "['completion']" in str(err.value) and "['prompt']" in str(err.value)
    require_columns(rows.select([0, 2]), ["completion"], "score")  # an empty completion is still a completion
    with pytest.raises(DataError, match="row 1 lacks"):
        require_columns(rows.select([0, 2]), ["completion"], "SFT", non_empty=True)
    with pytest.raises(DataError, match="missing \\['chosen'\\]"):
        require_columns(rows, ["prompt", "chosen"], "DPO")
    with pytest.raises(DataError, match="cannot tell the data format"):
        detect_format(["question"])


def test_conversational_rows_use_the_chat_template():
    tok = build_tokenizer()
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    prompt, completion = prompt_and_completion({"messages": messages}, tok)
    assert prompt == "<|user|>2+2?<eos><|assistant|>" and completion == "4<eos>"
    p2, c2 = prompt_and_completion({"prompt": messages[:1], "completion": messages[1:]}, tok)
    assert (p2, c2) == (prompt, completion)
    assert render_prompt(messages[:1], tok) == prompt and render_prompt("x=", tok) == "x="
    with pytest.raises(DataError, match="ending with an assistant turn"):
        prompt_and_completion({"messages": messages[:1]}, tok, 5)


def test_fields_can_be_positional_or_have_a_short_flag_and_required_ones_say_so():
    import argparse
    import typing
    from dataclasses import dataclass

    from rewardhub.config import setting

    @dataclass
    class Export:
        source: str = setting("", "where from", positional=True)
        output: str | None = setting(None, "where to", short="-o")
        name: str = setting("", "a name")

        required: typing.ClassVar[tuple[str, ...]] = ("name",)

    p = argparse.ArgumentParser()
    add_flags(p, Export)
    cfg = load_config(Export, p.parse_args(["in.jsonl", "-o", "out.jsonl", "--name", "x"]))
    assert (cfg.source, cfg.output, cfg.name) == ("in.jsonl", "out.jsonl", "x")
    text = " ".join(p.format_help().split())
    assert "a name (required)" in text and "-o STR|NONE, --output STR|NONE" in text
