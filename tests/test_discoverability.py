"""Discoverability (issue 13, part 7): ``rewardhub plugins --options NAME`` lists a reward provider's options
from what the provider declares (its typed constructor and its docstring's ``Args:``), and ``rewardhub score``
rows carry what was scored next to the verdict."""

import inspect
import json

import pytest

from rewardhub.cli.main import main
from rewardhub.options import describe_options, docstring_args
from rewardhub_judge.provider import JudgeReward
from rewardhub_verifier.provider import VerifierReward


def options_json(name, capsys):
    assert main(["plugins", "--options", name, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def constructor_params(cls):
    return [n for n in inspect.signature(cls.__init__).parameters if n != "self"]


def test_judge_options_as_json(capsys):
    out = options_json("judge", capsys)
    assert out["reward"] == "judge" and out["package"] and out["description"]
    options = {o["name"]: o for o in out["options"]}
    assert list(options) == constructor_params(JudgeReward)
    assert len(options) >= 14 and all(o["help"] for o in options.values())  # every option documented
    assert options["min_score"] == {"name": "min_score", "type": "float", "required": False, "default": 1.0,
                                    "help": "the judge's scale; the reward is `(score - min_score) / "
                                            "(max_score - min_score)`."}
    assert options["max_score"]["default"] == 10.0 and options["max_score"]["help"] == options["min_score"]["help"]
    assert options["cache"]["type"] == "bool" and options["cache"]["default"] is True
    assert options["base_url"]["type"] == "str | None" and options["base_url"]["default"] is None
    assert options["reference_columns"]["default"] == ["reference", "answer"]
    # help continued over several docstring lines is joined; reST markup is shown plainly
    template = options["template"]["help"]
    assert template.endswith("it must ask for `SCORE: n`.") and "``" not in template


def test_verifier_options_as_json(capsys):
    options = {o["name"]: o for o in options_json("verifier", capsys)["options"]}
    assert list(options) == constructor_params(VerifierReward) and all(o["help"] for o in options.values())
    assert options["sandbox"]["default"] == "bwrap" and "unsafe-local" in options["sandbox"]["help"]
    assert options["code_time_limit_s"]["type"] == "float | None"
    assert options["workers"] == {"name": "workers", "type": "int", "required": False, "default": 2,
                                  "help": "sandbox worker processes (one sample each at a time); ~ the cores to use."}


@pytest.mark.parametrize("name, shown", [
    ("judge", ["base_url", "max_retries", "reference_columns", "reference,answer", "float", "512", "true"]),
    ("verifier", ["checker", "partial_credit", "io_compare", "lines", "bwrap", "0.1"]),
])
def test_options_table(name, shown, capsys):
    assert main(["plugins", "--options", name]) == 0
    out = capsys.readouterr().out
    assert f"options of reward {name!r}" in out and "--reward-arg KEY=VALUE" in out
    assert all(s in out for s in shown), [s for s in shown if s not in out]


def test_unknown_provider_lists_the_names(capsys):
    assert main(["plugins", "--options", "jugde"]) == 2
    err = capsys.readouterr().err
    assert "unknown reward 'jugde'" in err and all(n in err for n in ("judge", "verifier", "exact-match", "length"))


def test_plain_plugins_listing_is_unchanged(capsys):
    assert main(["plugins", "--json"]) == 0
    assert {"plugins", "failures"} <= set(json.loads(capsys.readouterr().out))


def test_docstring_args_parsing():
    doc = """Summary.

    Args:
        a, b: the scale;
            continued here.
        c: one line with ``code`` and :meth:`score`.

    Example:
        d: not an option
    """
    scale = "the scale; continued here."
    assert docstring_args(inspect.cleandoc(doc)) == {"a": scale, "b": scale, "c": "one line with `code` and `score`."}

    class Provider:
        """A provider.

        Args:
            x: documented on the class.
        """

        def __init__(self, x: int, y: str = "", z: tuple[str, ...] = ("p", "q")):
            pass

    assert describe_options(Provider) == [
        {"name": "x", "type": "int", "required": True, "default": None, "help": "documented on the class."},
        {"name": "y", "type": "str", "required": False, "default": "", "help": ""},
        {"name": "z", "type": "tuple", "required": False, "default": ["p", "q"], "help": ""},
    ]


def test_score_rows_carry_prompt_completion_reward_status_detail(tmp_path):
    data = tmp_path / "d.jsonl"
    lines = [json.dumps({"prompt": "1+1=", "completion": "2", "answer": "2"}),
             json.dumps({"prompt": "1+2=", "completion": "4", "answer": "3"}),
             json.dumps({"prompt": "1+3=", "answer": "4"}),  # no completion: a bad row, still written
             "{not json"]
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--reward=exact-match", "--data", str(data), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all({"prompt", "completion", "reward", "status", "detail"} <= set(r) for r in rows)
    assert [(r["prompt"], r["completion"], r["reward"], r["status"]) for r in rows] == [
        ("1+1=", "2", 1.0, "ok"), ("1+2=", "4", 0.0, "wrong"), ("1+3=", None, None, "error"),
        (None, None, None, "error")]
    assert "no `completion`" in rows[2]["detail"] and rows[3]["line"] == 4
