"""TRL's implicit-prompt preference data (issue 13, part 1): rows with only chosen and rejected, the prompt
being what both start with, are made explicit in one place (rewardhub.data) and read that way by DPO, the
reward model and ``feedback import``.

The reference is TRL's documentation ("Dataset formats and types") and the docstring of ``trl.extract_prompt``
/ ``maybe_extract_prompt``: their example rows and outputs are copied below by hand (trl is not a dependency);
where trl is importable, its ``extract_prompt`` is checked against the same rows too.
"""

import json

import pytest

from rewardhub.cli.main import main
from rewardhub.config import DPOConfig, RewardModelConfig
from rewardhub.data import detect_format, extract_prompt, has_implicit_prompt, with_explicit_prompts
from rewardhub.errors import DataError
from rewardhub.recipes.dpo import resolve_pair_source, tokenize_pairs, train_dpo
from rewardhub.recipes.reward_model import train_reward_model
from rewardhub.testing import build_tokenizer

SKY = "What color is the sky?"
SUN = "Where is the sun?"


def msg(role, content):
    return {"role": role, "content": content}


# TRL docs, "Dataset formats and types", preference type with an implicit prompt: the standard row and the
# conversational row, with the explicit rows the same table gives for them.
TRL_STANDARD = {"chosen": "The sky is blue.", "rejected": "The sky is green."}
TRL_STANDARD_EXPLICIT = {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
TRL_CONVERSATIONAL = {"chosen": [msg("user", SKY), msg("assistant", "It is blue.")],
                      "rejected": [msg("user", SKY), msg("assistant", "It is green.")]}
TRL_CONVERSATIONAL_EXPLICIT = {"prompt": [msg("user", SKY)], "chosen": [msg("assistant", "It is blue.")],
                               "rejected": [msg("assistant", "It is green.")]}
# trl.maybe_extract_prompt's docstring: a two-row conversational dataset through Dataset.map(extract_prompt)
TRL_DOCSTRING_ROWS = [
    TRL_CONVERSATIONAL,
    {"chosen": [msg("user", SUN), msg("assistant", "In the sky.")],
     "rejected": [msg("user", SUN), msg("assistant", "In the sea.")]},
]
TRL_DOCSTRING_EXPLICIT = [
    TRL_CONVERSATIONAL_EXPLICIT,
    {"prompt": [msg("user", SUN)], "chosen": [msg("assistant", "In the sky.")],
     "rejected": [msg("assistant", "In the sea.")]},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def dataset(rows):
    import datasets

    return datasets.Dataset.from_list(rows)


@pytest.mark.parametrize("row, expected", [(TRL_STANDARD, TRL_STANDARD_EXPLICIT),
                                           (TRL_CONVERSATIONAL, TRL_CONVERSATIONAL_EXPLICIT)])
def test_trl_documented_examples(row, expected):
    prompt, chosen, rejected = extract_prompt(row["chosen"], row["rejected"])
    assert {"prompt": prompt, "chosen": chosen, "rejected": rejected} == expected
    assert with_explicit_prompts(dataset([row]))[0] == expected
    try:  # an independent reference where it is installed (it is not a dependency)
        from trl import extract_prompt as trl_extract_prompt
    except ImportError:
        return
    assert trl_extract_prompt(dict(row)) == expected


def test_trl_docstring_dataset():
    rows = with_explicit_prompts(dataset(TRL_DOCSTRING_ROWS))
    assert rows.column_names == ["prompt", "chosen", "rejected"] and rows.to_list() == TRL_DOCSTRING_EXPLICIT


def test_format_is_recognised():
    assert has_implicit_prompt(["chosen", "rejected"]) and not has_implicit_prompt(["prompt", "chosen", "rejected"])
    assert detect_format(["chosen", "rejected", "margin"]) == "implicit_preference"
    assert detect_format(["prompt", "chosen", "rejected"]) == "preference"


@pytest.mark.parametrize("chosen, rejected, expected", [
    # cut at a word boundary, not inside "blue"/"black" (TRL would give the prompt "The sky is b")
    ("The sky is blue", "The sky is black", ("The sky is", " blue", " black")),
    # the whitespace run between prompt and reply goes with the replies
    ("Q: 2+2?\n\nA: 4", "Q: 2+2?\n\nA: 5", ("Q: 2+2?\n\nA:", " 4", " 5")),
    # one reply extends the other: both keep a non-empty reply
    ("The sky is blue.", "The sky is blue. Really.", ("The sky is", " blue.", " blue. Really.")),
    ("Answer: yes", "Answer:\tno", ("Answer:", " yes", "\tno")),
])
def test_standard_prefix_is_cut_at_a_word_boundary(chosen, rejected, expected):
    assert extract_prompt(chosen, rejected) == expected


def test_conversations_keep_a_reply_each():
    # multi-turn: the prompt is every shared message; a conversation that is a prefix of the other keeps its
    # last message as its reply (as TRL's extract_prompt and the feedback store did)
    turns = [msg("user", "hi"), msg("assistant", "hello"), msg("user", SKY)]
    assert extract_prompt([*turns, msg("assistant", "blue")], [*turns, msg("assistant", "green")]) == (
        turns, [msg("assistant", "blue")], [msg("assistant", "green")])
    short, long = turns[:2], [*turns, msg("assistant", "blue")]
    assert extract_prompt(short, long) == ([msg("user", "hi")], [msg("assistant", "hello")], long[1:])


@pytest.mark.parametrize("chosen, rejected, message", [
    ("blue", "green", r"row 3: no `prompt`, and chosen and rejected share no leading words"),
    ("Blue sky", "Bluer sky", r"row 3: no `prompt`, and chosen and rejected share no leading words"),
    ([msg("user", "a"), msg("assistant", "b")], [msg("user", "c"), msg("assistant", "d")],
     r"row 3: no `prompt`, and the chosen and rejected conversations share no leading message"),
    ("The sky is blue.", [msg("assistant", "green")], r"row 3: .*not both strings or both message lists"),
    (None, "x", r"row 3: `chosen` is missing"),
])
def test_no_prompt_to_extract_is_a_clear_error(chosen, rejected, message):
    with pytest.raises(DataError, match=message):
        extract_prompt(chosen, rejected, "row 3")
    good = {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    if isinstance(chosen, str) and isinstance(rejected, str):
        with pytest.raises(DataError, match=message):
            with_explicit_prompts(dataset([good] * 3 + [{"chosen": chosen, "rejected": rejected}]))


def test_explicit_data_passes_unchanged_and_other_columns_stay():
    explicit = dataset([TRL_STANDARD_EXPLICIT])
    assert with_explicit_prompts(explicit) is explicit and with_explicit_prompts(None) is None
    prompts = dataset([{"prompt": "1+1="}])
    assert with_explicit_prompts(prompts) is prompts
    rows = with_explicit_prompts(dataset([{**TRL_STANDARD, "margin": 2.0}]))
    assert rows.to_list() == [{**TRL_STANDARD_EXPLICIT, "margin": 2.0}]
    # a row whose prompt is null (absent from its JSON line) gets it extracted, as TRL does per example
    mixed = with_explicit_prompts(dataset([{"prompt": "2+2=", "chosen": "4", "rejected": "5"},
                                           {"prompt": None, **TRL_STANDARD}]))
    assert mixed.to_list() == [{"prompt": "2+2=", "chosen": "4", "rejected": "5"}, TRL_STANDARD_EXPLICIT]


def test_extracted_pairs_tokenize_like_explicit_ones():
    tok = build_tokenizer()
    for row, explicit in ((TRL_CONVERSATIONAL, TRL_CONVERSATIONAL_EXPLICIT), (TRL_STANDARD, TRL_STANDARD_EXPLICIT)):
        implicit = with_explicit_prompts(dataset([row]))
        assert tokenize_pairs(implicit, tok, 64) == tokenize_pairs([explicit], tok, 64)
    [ex] = tokenize_pairs(with_explicit_prompts(dataset([TRL_CONVERSATIONAL])), tok, 64)
    assert tok.decode(ex["prompt"]) == f"<|user|>{SKY}<eos><|assistant|>" and tok.decode(ex["chosen"]) == \
        "It is blue.<eos>"


# ------------------------------------------------------------------------------------------------------------
# DPO, the reward model and feedback import, end to end
# ------------------------------------------------------------------------------------------------------------

def arithmetic_pairs(n, start=0):
    """(implicit rows, the explicit rows they stand for): ``a+b= c`` right vs one off."""
    implicit, explicit = [], []
    for i in range(start, start + n):
        a, b = i % 7, i % 5
        prompt, right, wrong = f"{a}+{b}=", f" {a + b}", f" {a + b + 1}"
        implicit.append({"chosen": prompt + right, "rejected": prompt + wrong})
        explicit.append({"prompt": prompt, "chosen": right, "rejected": wrong})
    return implicit, explicit


@pytest.fixture
def pair_files(tmp_path):
    implicit, explicit = arithmetic_pairs(16)
    eval_implicit, eval_explicit = arithmetic_pairs(8, start=40)
    return {"implicit": write_jsonl(tmp_path / "implicit.jsonl", implicit),
            "explicit": write_jsonl(tmp_path / "explicit.jsonl", explicit),
            "eval_implicit": write_jsonl(tmp_path / "eval_implicit.jsonl", eval_implicit),
            "eval_explicit": write_jsonl(tmp_path / "eval_explicit.jsonl", eval_explicit)}


def dpo_cfg(model, out, data, **kw):
    base = dict(model=str(model), data=data, out=str(out), max_steps=2, batch_size=4, lr=1e-3, beta=0.1,
                warmup_ratio=0.0, log_every=1, eval_every=0, save_every=0, threads=1, resume=False)
    base.update(kw)
    return DPOConfig(**base)


def test_pairs_auto_says_the_prompt_is_implicit(tmp_path, pair_files):
    data = pair_files["implicit"]
    auto = resolve_pair_source(dpo_cfg("/nonexistent/model", tmp_path, data, pairs="auto"), None)
    assert auto.source == "dataset" and auto.line == (
        "pairs: dataset (--data has chosen/rejected with an implicit prompt: extracted as the longest common "
        "prefix)")
    assert auto.rows[0] == {"prompt": "0+0=", "chosen": " 0", "rejected": " 1"}
    given = resolve_pair_source(dpo_cfg("/nonexistent/model", tmp_path, data, pairs="dataset"), None)
    assert given.line == ("pairs: dataset (--pairs dataset; --data has chosen/rejected with an implicit prompt: "
                          "extracted as the longest common prefix)")
    online = resolve_pair_source(dpo_cfg("/nonexistent/model", tmp_path, data, pairs="online", reward="length"),
                                 None)
    assert online.source == "online" and online.rows["prompt"][:2] == ["0+0=", "1+1="]
    assert "the prompts extracted from chosen/rejected (an implicit prompt)" in online.line


def test_pairs_dataset_with_no_shared_prefix_names_the_row(tmp_path):
    data = write_jsonl(tmp_path / "bad.jsonl", [TRL_STANDARD, {"chosen": "4", "rejected": "5"}])
    with pytest.raises(DataError, match="row 1: no `prompt`, and chosen and rejected share no leading words"):
        resolve_pair_source(dpo_cfg("/nonexistent/model", tmp_path, data, pairs="auto"), None)


def _numbers(final):
    return {k: v for k, v in final.items() if isinstance(v, float) and "time" not in k and "per_s" not in k}


def test_dpo_trains_on_implicit_prompts_as_on_explicit_ones(tiny_model_path, tmp_path, pair_files):
    runs = {}
    for kind in ("implicit", "explicit"):
        cfg = dpo_cfg(tiny_model_path, tmp_path / kind, pair_files[kind], pairs="auto",
                      eval_data=pair_files[f"eval_{kind}"])
        runs[kind] = train_dpo(cfg, announce=lambda line: None)
    final = runs["implicit"]
    assert final["steps"] == 2 and final["pair_source"] == "dataset" and final["train_pairs"] == 16
    assert "loss" in final and "initial/loss" in final  # held-out pairs from the implicit eval file
    assert _numbers(runs["implicit"]) == pytest.approx(_numbers(runs["explicit"]))


def test_reward_model_trains_on_implicit_prompts_as_on_explicit_ones(tiny_model_path, tmp_path, pair_files):
    runs = {}
    for kind in ("implicit", "explicit"):
        cfg = RewardModelConfig(model=str(tiny_model_path), data=pair_files[kind],
                                eval_data=pair_files[f"eval_{kind}"], calibration_data=pair_files[kind],
                                out=str(tmp_path / kind), max_steps=2, batch_size=4, lr=1e-3, warmup_ratio=0.0,
                                log_every=1, eval_every=0, save_every=0, threads=1)
        runs[kind] = train_reward_model(cfg)
    final = runs["implicit"]
    assert final["steps"] == 2 and "accuracy" in final and final["calibration/count"] == 32
    assert _numbers(runs["implicit"]) == pytest.approx(_numbers(runs["explicit"]))


def test_feedback_import_of_implicit_prompt_rows(tmp_path, capsys):
    src = write_jsonl(tmp_path / "trl.jsonl", TRL_DOCSTRING_ROWS)
    standard = write_jsonl(tmp_path / "standard.jsonl", [TRL_STANDARD])
    db = str(tmp_path / "fb.sqlite")
    assert main(["feedback", "import", src, "--db", db]) == 0
    assert main(["feedback", "import", standard, "--db", db]) == 0
    assert main(["feedback", "import", str(tmp_path / "standard.jsonl"), "--db", db]) == 0  # a duplicate
    out = tmp_path / "out.jsonl"
    assert main(["feedback", "export", "--db", db, "-o", str(out)]) == 0
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(exported, key=json.dumps) == sorted([*TRL_DOCSTRING_EXPLICIT, TRL_STANDARD_EXPLICIT],
                                                      key=json.dumps)
    bad = write_jsonl(tmp_path / "bad.jsonl", [TRL_STANDARD, {"chosen": "blue", "rejected": "green"}])
    assert main(["feedback", "import", bad, "--db", db]) != 0
    assert "bad.jsonl line 2: no `prompt`, and chosen and rejected share no leading words" in capsys.readouterr().err
