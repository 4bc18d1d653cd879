"""GRPO end to end with rollouts from a real ``rewardhub serve`` subprocess: full-weight and LoRA sync, CLI."""

import json
import urllib.request

import pytest
import torch
from conftest import records

from rewardhub.cli.main import main
from rewardhub.config import RLConfig
from rewardhub.generation import SamplingParams, TorchBackend
from rewardhub.generation_server import ServerBackend
from rewardhub.models import load_model, load_tokenizer
from rewardhub.recipes.rl import train_rl
from rewardhub.rewards import Reward, RewardProvider
from rewardhub_judge.subprocess_server import served

PROMPTS = ["12+34=", "7+1=", "40+2="]


class Distinct(RewardProvider):
    """The number of distinct characters: it differs within almost every group, so every step moves the weights."""

    def score(self, samples):
        return [Reward(float(len(set(s.completion)))) for s in samples]


@pytest.fixture(scope="module")
def server(tiny_model_path, tmp_path_factory):
    """``rewardhub serve`` on 127.0.0.1, port 0, in a subprocess (one for the module: it takes seconds to start);
    its /v1 URL once it answers. Each test starts by syncing the weights it trains from."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with served(str(tiny_model_path), log, served_name="tiny", start_timeout=120) as url:
        yield url

def cfg(tiny_model_path, out, url, **kw):
    base = dict(model=str(tiny_model_path), algo="grpo", data="arithmetic", data_args={"size": 32}, out=str(out),
                max_steps=2, batch_size=2, num_generations=3, max_new_tokens=6, lr=5e-2, warmup_ratio=0.0,
                lr_scheduler="constant", log_every=1, eval_every=0, save_every=0, eval_size=4, threads=1,
                completions_every=0, seed=0, kl_coef=0.0, generation_server=url)
    base.update(kw)
    return RLConfig(**base)


def assert_server_samples_like(url, model_name, trained_dir):
    """The server's greedy completions and log-probs equal the trained model's, prompt by prompt."""
    tok = load_tokenizer(str(trained_dir))
    model = load_model(str(trained_dir), tokenizer=tok)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    kw = dict(eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    remote = ServerBackend(url, model=model_name).generate(model, ids, SamplingParams(10, 0.0), **kw)
    local = TorchBackend().generate(model, ids, SamplingParams(10, 0.0), **kw)
    assert torch.equal(remote.completion_ids, local.completion_ids)
    assert torch.allclose(remote.logprobs, local.logprobs, atol=1e-4)


def test_grpo_with_full_weight_sync_keeps_the_server_equal_to_the_trainer(server, tiny_model_path, tmp_path):
    out = tmp_path / "run"
    train_rl(cfg(tiny_model_path, out, server, recompute_logprobs=True), provider=Distinct())
    rows = records(out)
    assert len(rows) == 2
    for row in rows:  # every step's rollout came from the weights the trainer had: same log-probs
        assert row["generation/logprobs_recomputed"] == 1.0
        assert row["generation/logprob_abs_diff_max"] < 1e-4, row
        assert row["time/weight_sync"] > 0
    assert_server_samples_like(server, "tiny", out / "model")
    # the starting weights differ from the trained ones, so the check above sees the sync
    start = load_model(str(tiny_model_path), tokenizer=load_tokenizer(str(tiny_model_path)))
    trained = load_model(str(out / "model"), tokenizer=load_tokenizer(str(out / "model")))
    assert not torch.allclose(start.get_input_embeddings().weight, trained.get_input_embeddings().weight)


def test_grpo_with_lora_sync_serves_the_adapter_of_the_last_step(server, tiny_model_path, tmp_path):
    out = tmp_path / "run"
    base = load_model(str(tiny_model_path), tokenizer=load_tokenizer(str(tiny_model_path)))
    ServerBackend(server).sync_weights(base, 0)  # the server's base back to the starting weights (another test's run)
    train_rl(cfg(tiny_model_path, out, server, lora_r=4, lora_alpha=16, lr=5e-2), provider=Distinct())
    rows = records(out)
    assert [r["generation/logprobs_recomputed"] for r in rows] == [0.0, 0.0]  # rewardhub serve's log-probs serve
    listed = urllib.request.urlopen(server + "/models").read().decode()
    assert '"rewardhub-lora-v2"' in listed and '"rewardhub-lora-v1"' not in listed
    assert_server_samples_like(server, "rewardhub-lora-v2", out / "model")  # out/model: the adapter merged in


def test_cli_trains_grpo_against_a_generation_server(server, tiny_model_path, tmp_path):
    out = tmp_path / "cli"
    code = main(["train", "--algo", "grpo", "--model", str(tiny_model_path), "--generation-server", server,
                 "--generation-logprobs", "recompute", "--data-arg", "size=16", "--max-steps", "2",
                 "--batch-size", "2", "--num-generations", "2", "--max-new-tokens", "4", "--sft-warmup-steps", "0",
                 "--eval-size", "4", "--save-every", "0", "--log-every", "1", "--threads", "1", "--out", str(out),
                 "--reward", "length"])
    assert code == 0
    rows = records(out)
    assert len(rows) == 2 and all(r["generation/logprob_abs_diff_max"] < 1e-4 for r in rows)
    assert_server_samples_like(server, "tiny", out / "model")


def test_pipelined_grpo_against_the_server_syncs_on_the_staleness_schedule(server, tiny_model_path, tmp_path):
    """--async-rollouts with a server backend: the pipeline, not the loop, pushes the weights (versions on its
    schedule, never while a rollout is in flight), staleness 1 after the first step, and the server ends up
    with the trained weights."""
    out = tmp_path / "run"
    base = load_model(str(tiny_model_path), tokenizer=load_tokenizer(str(tiny_model_path)))
    ServerBackend(server).sync_weights(base, 0)  # back to the starting weights (another test's run)
    train_rl(cfg(tiny_model_path, out, server, max_steps=3, async_rollouts=True, max_staleness=1),
             provider=Distinct())
    rows = records(out)
    assert [r["rollout/staleness"] for r in rows] == [0.0, 1.0, 1.0]
    assert [r["rollout/weights_version"] for r in rows] == [0.0, 0.0, 1.0]
    assert all(r["generation/logprobs_recomputed"] == 0.0 for r in rows)  # behaviour log-probs: the server's
    health = json.loads(urllib.request.urlopen(server.rsplit("/v1", 1)[0] + "/health").read())
    assert str(health["weight_version"]) == "1", health  # the last refresh: the weights after step 1
    with pytest.raises(Exception, match="behaviour policy"):
        train_rl(cfg(tiny_model_path, tmp_path / "bad", server, async_rollouts=True, generation_logprobs="recompute"),
                 provider=Distinct())
