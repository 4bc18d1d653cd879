"""Output a person reads: integers as integers, unwrapped lines off a terminal, result paths, no deprecation noise."""

from __future__ import annotations

import subprocess
import sys

from rewardhub.cli.main import main
from rewardhub.console import number


def test_number_shows_counts_as_integers_and_other_floats_to_four_figures():
    assert [number(v) for v in (500.0, 3, -2.0, 0.12345, 1234.5678, 1e-7)] == [
        "500", "3", "-2", "0.1235", "1235", "1e-07"]
    assert [number(v) for v in (float("nan"), float("inf"), True, "x", None)] == ["nan", "inf", "True", "x", "None"]


def test_sft_output_has_one_unwrapped_line_per_message_and_names_every_result(tiny_model_path, tmp_path, capsys):
    out = tmp_path / ("a-directory-name-long-enough-to-need-more-than-eighty-columns-" * 2) / "run"
    assert main(["sft", "--model", str(tiny_model_path), "--out", str(out), "--max-steps", "4", "--batch-size", "8",
                 "--eval-size", "4", "--eval-max-new-tokens", "4", "--data-arg", "size=64", "--log-every", "2",
                 "--threads", "1"]) == 0
    shown = capsys.readouterr().out
    lines = shown.splitlines()
    # a metric row is one line however long, and counts are integers
    assert any(line.startswith("train step 2: loss=") for line in lines)
    assert any(line.startswith("eval step 4: ") and "n=4," in line for line in lines), shown
    [where] = [line for line in lines if line.startswith("metrics: ")]
    assert where == (f"metrics: {out / 'metrics.jsonl'}; checkpoint: {out / 'checkpoints' / 'step-4'}; "
                     f"model: {out / 'model'}")
    assert "4.0000" not in shown and "n=4.0" not in shown


GENERATE = """
from rewardhub.generation import SamplingParams, generate_text
from rewardhub.models import load_model, load_tokenizer
model, tok = load_model(sys.argv[1]), load_tokenizer(sys.argv[1])
print(generate_text(model, tok, ["1+1=", "22+3="], SamplingParams(max_new_tokens=6, temperature=1.0)))
"""


def test_generation_prints_no_deprecation_warning(tiny_model_path):
    done = subprocess.run([sys.executable, "-W", "always", "-c", "import sys" + GENERATE, str(tiny_model_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "deprecat" not in done.stderr.lower(), done.stderr
