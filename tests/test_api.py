"""The Python API: paths or in-memory objects in, a Result out; from a plain script with no main guard."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import rewardhub
from rewardhub.api import cached_rows
from rewardhub.errors import ConfigError, DataError, RunDirectoryError
from rewardhub_tasks.arithmetic import build_arithmetic


def arithmetic_rows(n: int) -> list[dict]:
    return [dict(r) for r in build_arithmetic(size=n)]


SMALL = dict(batch_size=8, eval_size=4, threads=1, lr=1e-3, log_every=1, eval_every=0, save_every=0)


@pytest.fixture(scope="module")
def loaded(tiny_model_path):
    return AutoModelForCausalLM.from_pretrained(tiny_model_path), AutoTokenizer.from_pretrained(tiny_model_path)


def test_everything_is_exported():
    for name in ("sft", "train", "train_rm", "evaluate", "Result"):
        assert name in rewardhub.__all__ and callable(getattr(rewardhub, name))


def test_in_memory_rows_are_cached_by_content():
    rows = [{"prompt": "1+1=", "completion": "2"}, {"prompt": "2+2=", "completion": "4"}]
    path = cached_rows(rows)
    assert cached_rows(datasets.Dataset.from_list(rows)) == path  # same content, same file
    assert cached_rows({"prompt": ["1+1=", "2+2="], "completion": ["2", "4"]}) == path  # columns too
    assert cached_rows(rows[:1]) != path
    assert [json.loads(line) for line in Path(path).read_text().splitlines()] == rows
    with pytest.raises(DataError, match="no rows"):
        cached_rows([])
    with pytest.raises(DataError, match="list of dicts"):
        cached_rows(["not a row"])


def test_sft_from_a_loaded_model_and_a_list_of_rows(loaded, tmp_path):
    model, tokenizer = loaded
    rows = arithmetic_rows(64)
    result = rewardhub.sft(model=model, tokenizer=tokenizer, data=rows, eval_data=rows[:4], reward="exact-match",
                           out=str(tmp_path / "sft"), max_steps=3, eval_max_new_tokens=4, **SMALL)
    assert isinstance(result, rewardhub.Result) and result.out == tmp_path / "sft"
    assert (result.model_path / "config.json").exists() and "accuracy" in result.metrics
    assert [r["step"] for r in result.history()] == [1, 2, 3]
    record = json.loads((tmp_path / "sft" / "run.json").read_text())
    assert "inputs/data-" in record["config"]["data"] and "inputs/model-" in record["config"]["model"]
    # other rows into the same run directory: noticed, as a changed --data would be
    with pytest.raises(RunDirectoryError, match="data:"):
        rewardhub.sft(model=model, tokenizer=tokenizer, data=rows[:32], eval_data=rows[:4], reward="exact-match",
                      out=str(tmp_path / "sft"), max_steps=3, eval_max_new_tokens=4, **SMALL)


def test_grpo_with_a_plain_function_on_a_dataset(tiny_model_path, tmp_path):
    ds = datasets.Dataset.from_list(arithmetic_rows(32))

    def digits(completion, row):
        return sum(ch.isdigit() for ch in completion) / 8

    result = rewardhub.train(algo="grpo", reward=digits, model=str(tiny_model_path), data=ds, eval_data=ds,
                             out=str(tmp_path / "grpo"), max_steps=2, num_generations=4, max_new_tokens=6,
                             sft_warmup_steps=0, **SMALL)
    assert result.metrics["steps"] == 2 and "after/reward_mean" in result.metrics
    record = json.loads((tmp_path / "grpo" / "run.json").read_text())
    assert record["config"]["reward"].endswith("digits")


def test_dpo_and_reward_model_from_lists_of_pairs(tiny_model_path, tmp_path):
    pairs = [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(16)]
    dpo = rewardhub.train(algo="dpo", model=str(tiny_model_path), data=pairs, out=str(tmp_path / "dpo"),
                          max_steps=2, **SMALL)
    assert dpo.metrics["steps"] == 2 and dpo.model_path.exists()
    rm = rewardhub.train_rm(model=str(tiny_model_path), data=pairs, out=str(tmp_path / "rm"), max_steps=2, **SMALL)
    assert (rm.model_path / "rewardhub_rm.json").exists()


def test_evaluate_uses_in_memory_objects_as_they_are(loaded, tmp_path):
    model, tokenizer = loaded
    rows = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "3+4=", "answer": "7"}]
    result = rewardhub.evaluate(model=model, tokenizer=tokenizer, data=rows, reward="exact-match", max_new_tokens=3,
                                output=str(tmp_path / "eval.jsonl"))
    assert result.metrics["count"] == 2 and len(result.rows) == 2
    assert [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()] == result.rows
    always = rewardhub.evaluate(model=model, tokenizer=tokenizer, data=rows, reward=lambda completion, row: 1.0,
                                max_new_tokens=3)
    assert always.metrics["mean"] == 1.0 and always.out is None


def test_bad_arguments_say_what_to_fix(loaded, tmp_path):
    model, tokenizer = loaded
    with pytest.raises(ConfigError, match="needs its tokenizer"):
        rewardhub.sft(model=model, data=arithmetic_rows(8), out=str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="tokenizer= goes with a loaded model"):
        rewardhub.sft(tokenizer=tokenizer, out=str(tmp_path / "b"))
    with pytest.raises(ConfigError, match="unknown option 'max_stepz'"):
        rewardhub.sft(max_stepz=3, out=str(tmp_path / "c"))
    with pytest.raises(DataError, match="DatasetDict"):
        rewardhub.sft(data=datasets.DatasetDict({"train": datasets.Dataset.from_list(arithmetic_rows(4))}))


SCRIPT = """
import json
import rewardhub

# no `if __name__ == "__main__":` guard: the verifier's worker pool must not run this script again
result = rewardhub.train(algo="grpo", reward="verifier", data="arithmetic", data_args={{"size": 32}},
                         out={out!r}, max_steps=1, num_generations=4, max_new_tokens=4, sft_warmup_steps=0,
                         batch_size=4, eval_size=4, threads=1)
print("RESULT", json.dumps({{"steps": result.metrics["steps"], "model": str(result.model_path)}}))
"""


def test_a_plain_script_without_a_main_guard_runs(tmp_path):
    script = tmp_path / "plain.py"
    script.write_text(textwrap.dedent(SCRIPT.format(out=str(tmp_path / "run"))))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    assert json.loads(line[7:]) == {"steps": 1, "model": str(tmp_path / "run" / "model")}
    assert done.stdout.count("stage 1/1") == 1  # the script ran once, not again in each worker
