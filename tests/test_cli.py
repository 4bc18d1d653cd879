"""The `rewardhub` command: help, plugin commands, errors (exit 2 with a message), score, eval and sft paths."""

import json
import textwrap
from types import ModuleType

import pytest

from rewardhub import hookimpl, hookspecs
from rewardhub.cli.main import CORE_COMMANDS, build_parser, main, subcommands
from rewardhub.plugins import get_plugin_manager


def every_command(parser=None, path=()):
    """Each command and subcommand of the built parser (plugins' included), as the argv that names it."""
    for name, sub in subcommands(parser or build_parser()).items():
        yield [*path, name]
        yield from every_command(sub, (*path, name))


@pytest.mark.parametrize("command", every_command(), ids=" ".join)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: rewardhub" in capsys.readouterr().out


def test_help_lists_core_then_plugin_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert list(subcommands(build_parser())) == [*CORE_COMMANDS, "serve", "feedback"]
    assert "serve a local model" in out and "human-feedback store" in out


def docstring_example(hook) -> ModuleType:
    """The ``Example::`` block of a hook's docstring, run as a plugin module (so the example is tested)."""
    code = textwrap.dedent(hook.__doc__.split("Example::", 1)[1])
    module = ModuleType(f"example_{hook.__name__}")
    exec(compile(code, module.__name__, "exec"), module.__dict__)
    return module


HELLO = docstring_example(hookspecs.rewardhub_register_commands)  # a third-party-style plugin: greets `hello`
add_hello, run_hello = HELLO.add_parser, HELLO.run


class OtherHelloPlugin:  # another package's `hello`
    @hookimpl
    def rewardhub_register_commands(self, register):
        register("hello", add_hello, lambda args: print("hi"))


class TrainPlugin:
    @hookimpl
    def rewardhub_register_commands(self, register):
        register("train", add_hello, run_hello)


class BrokenPlugins:
    @hookimpl
    def rewardhub_register_commands(self, register):
        register("bad-parser", lambda sub: sub.add_parser("bad-parser").add_argument("--x", type="no"), run_hello)
        raise RuntimeError("command table unreadable")


@pytest.fixture
def plugin():
    """Register in-test plugins on the process-wide manager; each is unregistered after the test."""
    pm, names = get_plugin_manager(), []

    def register(obj, name):
        pm.register(obj, name=name)
        names.append(name)

    yield register
    for name in names:
        pm.unregister(name=name)


def test_a_plugin_command_is_listed_and_runs(plugin, capsys):
    plugin(HELLO, "hello_plugin")
    assert main(["hello", "--name", "plugins"]) == 0
    assert capsys.readouterr().out == "hello, plugins\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "greet someone" in capsys.readouterr().out
    assert main(["plugins", "--json"]) == 0
    [entry] = [e for e in json.loads(capsys.readouterr().out)["plugins"] if e["name"] == "hello"]
    assert (entry["kind"], entry["plugin"], entry["description"]) == ("command", "hello_plugin", "greet someone")


def test_a_duplicate_command_name_is_an_error_naming_both(plugin, capsys):
    plugin(TrainPlugin(), "train_plugin")
    assert main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert "command 'train' is a core rewardhub command" in err and "plugin train_plugin" in err
    get_plugin_manager().unregister(name="train_plugin")
    plugin(HELLO, "hello_one")
    plugin(OtherHelloPlugin(), "hello_two")
    assert main(["--version"]) == 2
    err = capsys.readouterr().err
    assert "command 'hello' is registered twice" in err and "hello_one" in err and "hello_two" in err
    assert "REWARDHUB_LOAD_PLUGINS" in err


def test_a_broken_plugin_costs_only_its_own_commands(plugin, capsys):
    plugin(BrokenPlugins(), "broken_commands")
    plugin(HELLO, "hello_plugin")
    assert main(["hello"]) == 0
    assert "hello, world" in capsys.readouterr().out
    assert main(["plugins", "--json"]) == 0
    failures = json.loads(capsys.readouterr().out)["failures"]
    assert any(f["plugin"] == "broken_commands" and "command table unreadable" in f["error"] for f in failures)
    assert main(["bad-parser"]) == 2
    assert "command 'bad-parser' of plugin broken_commands" in capsys.readouterr().err


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
    assert main(["sft", "--model", str(tmp_path / "missing"), "--max-steps", "1", "--out", str(tmp_path / "o")]) == 2
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
