"""The SFT and reward-model benchmarks against TRL run end to end (tiny model, a few steps).

They are run by hand and their numbers go into the README, so a change to rewardhub's recipes or TRL's API
that breaks them would otherwise show only when someone next measures. Skipped without TRL (CI does not
install it), and marked long (left out by default; `pytest -m long tests/test_bench_vs_trl.py`): each starts
two worker processes that import transformers and TRL (both tests: 8 minutes on 2 cores at load 11).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

pytestmark = [pytest.mark.long,
              pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="TRL is not installed")]


@pytest.mark.parametrize(("script", "ratio_key"), [("bench_sft_vs_trl.py", "ratios"),
                                                    ("bench_reward_model_vs_trl.py", "ratios")])
def test_bench_runs_tiny(script, ratio_key, tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(BENCH / script), "--variant", "tiny", "--steps", "3", "--warmup", "1",
                           "--repeats", "1", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())["variants"]["tiny"]
    for framework in ("trl", "rewardhub"):
        row = report[framework]
        assert row["measured_steps"] == 2
        assert row["tokens_per_step"] > 0 and row["tokens_per_s"] > 0
        assert row["checks"]["dtype"] == "torch.float32" and not row["checks"]["gradient_checkpointing"]
    # the same rows in the same order (seed 0: both draw torch.randperm from a generator seeded 0), so both
    # frameworks fed their model the same tokens at every step
    tokens = {f: [s["tokens"] for s in report[f]["raw_steps"][0]] for f in ("trl", "rewardhub")}
    assert tokens["trl"] == tokens["rewardhub"]
    assert ratio_key in report
