"""ServerBackend against hand-made responses: Rollout layout, token-id formats, seeds, retries, clear errors."""

import math
import threading

import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from rewardhub.config import RLConfig, build_config
from rewardhub.errors import ConfigError, GenerationServerError
from rewardhub.generation import Rollout, SamplingParams, TorchBackend
from rewardhub.generation_server import (
    ServerBackend,
    backend_for,
    build_rollout,
    logprob_metrics,
    parse_choice,
    sampler_logprobs_usable,
    split_url,
)
from rewardhub.http_server import AppThread, bind_socket
from rewardhub.models import load_model, load_tokenizer
from rewardhub.rewards import Reward, RewardProvider

EOS, PAD = [1], 0
PARAMS = SamplingParams(max_new_tokens=4, temperature=0.7)


def choice(ids, lps=None, finish="length", index=0, as_strings=False, stop_reason=None):
    """A vLLM-shaped completion choice."""
    lps = lps if lps is not None else [-0.5] * len(ids)
    block = {"tokens": [f"token_id:{t}" for t in ids] if as_strings else [str(t) for t in ids],
             "token_logprobs": lps, "top_logprobs": None, "text_offset": list(range(len(ids)))}
    out = {"index": index, "text": "", "logprobs": block, "finish_reason": finish, "stop_reason": stop_reason}
    if not as_strings:
        out["token_ids"] = ids
    return out


def test_parse_choice_reads_token_ids_or_token_id_strings_and_cuts_after_the_first_eos():
    assert parse_choice(choice([5, 6, 1, 7]), EOS, 8) == ([5, 6, 1], [-0.5] * 3)
    assert parse_choice(choice([5, 6, 1, 7], as_strings=True), EOS, 8) == ([5, 6, 1], [-0.5] * 3)
    ids, lps = parse_choice(choice([5, 6, 7, 8, 9]), EOS, 4)  # never longer than max_new_tokens
    assert ids == [5, 6, 7, 8] and len(lps) == 4


def test_parse_choice_appends_an_eos_the_server_stopped_at_but_left_out_with_an_unknown_logprob():
    ids, lps = parse_choice(choice([5, 6], finish="stop", stop_reason=1), EOS, 8)
    assert ids == [5, 6, 1] and lps[:2] == [-0.5, -0.5] and math.isnan(lps[2])
    ids, lps = parse_choice(choice([5, 6], lps=[None, -1.0]), EOS, 8)  # a missing log-prob is NaN
    assert ids == [5, 6] and math.isnan(lps[0]) and lps[1] == -1.0


@pytest.mark.parametrize(("bad", "needle"), [
    ({"index": 0, "text": "ab", "logprobs": {"tokens": ["a", "b"], "token_logprobs": [0, 0]}}, "tokens as text"),
    ({"index": 0, "text": "ab", "logprobs": None}, "no token ids"),
    ({"index": 0, "token_ids": [3, 4], "logprobs": {"token_logprobs": [0.0]}}, "1 log-probs for 2 tokens"),
])
def test_parse_choice_says_what_the_server_did_not_return(bad, needle):
    with pytest.raises(GenerationServerError, match=needle):
        parse_choice(bad, EOS, 8)


def test_build_rollout_lays_completions_out_exactly_as_the_torch_backend(tiny_model_path):
    tok = load_tokenizer(str(tiny_model_path))
    model = load_model(str(tiny_model_path), tokenizer=tok)
    prompts = [tok("12+3=")["input_ids"], tok("7=")["input_ids"], tok("12+3=")["input_ids"]]
    eos = [tok.eos_token_id]
    local = TorchBackend().generate(model, prompts, SamplingParams(12, 1.5), eos_token_id=eos,
                                    pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(3))
    assert local.eos_reached.any() and not local.eos_reached.all()  # both kinds of row are checked
    completions = [(row[:n], lp[:n]) for row, lp, n in zip(local.completion_ids.tolist(), local.logprobs.tolist(),
                                                           local.completion_lengths.tolist())]
    built = build_rollout(prompts, completions, tok.pad_token_id, eos)
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "logprobs", "eos_reached"):
        assert torch.equal(getattr(built, name), getattr(local, name)), name


class Scripted:
    """A fake /v1/completions server: records request bodies, answers from ``reply(body)``; 503s first if asked."""

    def __init__(self, reply, fail_first=0, health=None):
        self.bodies, self.reply, self.fail_first, self.calls = [], reply, fail_first, 0
        self.lock = threading.Lock()
        app = FastAPI()

        @app.post("/v1/completions")
        async def completions(request: Request):
            body = await request.json()
            with self.lock:
                self.calls += 1
                if self.calls <= self.fail_first:
                    return JSONResponse({"error": {"message": "busy"}}, status_code=503)
                self.bodies.append(body)
            answer = self.reply(body)
            status, answer = answer if isinstance(answer, tuple) else (200, answer)
            return JSONResponse(answer, status_code=status)

        @app.get("/v1/models")
        async def models():
            return {"data": [{"id": "served"}]}

        @app.get("/health")
        async def health_route():
            return health if health is not None else JSONResponse(None)

        self.thread = AppThread(app)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.stop()

    @property
    def url(self):
        return self.thread.url + "/v1"


def echo_prompt(body):
    """n choices whose tokens are the prompt's first token repeated, the last one ending with EOS."""
    first = body["prompt"][0]
    n = body["n"]
    return {"choices": [choice([first + 10] * (i + 1) + ([1] if i == n - 1 else []), index=i) for i in range(n)]}


def test_one_request_per_distinct_prompt_with_n_its_repeats_and_seeds_from_the_generator():
    prompts = [[2, 3], [2, 3], [2, 3], [4], [4], [4]]
    with Scripted(echo_prompt) as server:
        backend = ServerBackend(server.url, concurrency=2)
        a = backend.generate(None, prompts, PARAMS, eos_token_id=EOS, pad_token_id=PAD,
                             generator=torch.Generator().manual_seed(7))
        first = sorted(server.bodies, key=lambda b: b["prompt"])
        server.bodies.clear()
        backend.generate(None, prompts, PARAMS, eos_token_id=EOS, pad_token_id=PAD,
                         generator=torch.Generator().manual_seed(7))
        again = sorted(server.bodies, key=lambda b: b["prompt"])
    assert [(b["prompt"], b["n"]) for b in first] == [([2, 3], 3), ([4], 3)]
    assert first == again and first[0]["seed"] != first[1]["seed"]  # same generator state, same requests
    body = first[0]
    assert body["model"] == "served" and body["stop_token_ids"] == EOS and body["return_token_ids"]
    assert body["return_tokens_as_token_ids"] and body["logprobs"] == 1 and "top_k" not in body
    assert body["max_tokens"] == 4 and body["temperature"] == 0.7
    assert a.prompt_ids.tolist() == [[2, 3]] * 3 + [[PAD, 4]] * 3 and a.prompt_mask.tolist()[3] == [0, 1]
    assert a.completion_ids.tolist()[:3] == [[12, PAD, PAD, PAD], [12, 12, PAD, PAD], [12, 12, 12, 1]]
    assert a.completion_mask.tolist()[2] == [1, 1, 1, 1] and a.eos_reached.tolist() == [False, False, True] * 2
    assert a.logprobs.tolist()[0] == [-0.5, 0.0, 0.0, 0.0]


def test_retries_a_busy_server_then_reports_a_missing_model_with_the_url():
    with Scripted(echo_prompt, fail_first=2) as server:
        backend = ServerBackend(server.url, model="served", retries=3)
        rollout = backend.generate(None, [[5]], PARAMS, eos_token_id=EOS, pad_token_id=PAD)
        assert server.calls == 3 and rollout.completion_ids.tolist() == [[15, 1]]
    # a server echoing the body back: no choices at all
    with Scripted(lambda b: b) as server, pytest.raises(GenerationServerError, match="no 'choices' list for n=1"):
        ServerBackend(server.url).generate(None, [[5]], PARAMS, eos_token_id=EOS, pad_token_id=PAD)
    missing = (404, {"error": {"message": "The model `x` does not exist."}})
    with Scripted(lambda b: missing) as server, pytest.raises(
            GenerationServerError, match=r"/v1/completions does not serve model 'x'.*--generation-model"):
        ServerBackend(server.url, model="x").generate(None, [[5]], PARAMS, eos_token_id=EOS, pad_token_id=PAD)


def test_a_server_that_is_not_running_is_named_with_what_to_do():
    sock = bind_socket("127.0.0.1", 0)  # a port nothing listens on (bound, not listening)
    port = sock.getsockname()[1]
    try:
        backend = ServerBackend(f"http://127.0.0.1:{port}", model="m", retries=1)
        with pytest.raises(GenerationServerError, match=rf"cannot reach the generation server at http://127.0.0.1:"
                                                        rf"{port}/v1/completions.*rewardhub serve"):
            backend.generate(None, [[5]], PARAMS, eos_token_id=EOS, pad_token_id=PAD)
    finally:
        sock.close()


def test_the_server_log_probs_are_trusted_only_from_rewardhub_serve_or_when_asked():
    with Scripted(echo_prompt) as vllm_like, Scripted(echo_prompt, health={"logprobs": "rewardhub"}) as ours:
        assert not ServerBackend(vllm_like.url).logprobs_trusted
        assert ServerBackend(vllm_like.url, logprobs="server").logprobs_trusted
        assert ServerBackend(ours.url).logprobs_trusted
        assert not ServerBackend(ours.url, logprobs="recompute").logprobs_trusted


def test_missing_log_probs_force_a_recompute_and_the_metrics_say_how_far_apart_they_were():
    prompts, comps = [[3], [3]], [([5, 1], [-1.0, math.nan]), ([6], [-2.0])]
    rollout = build_rollout(prompts, comps, PAD, EOS)
    assert not sampler_logprobs_usable(TorchBackend(), rollout)
    fine = build_rollout(prompts, [([5, 1], [-1.0, -0.1]), ([6], [-2.0])], PAD, EOS)
    assert sampler_logprobs_usable(TorchBackend(), fine)
    trainer = torch.tensor([[-1.25, -0.5], [-2.0, 0.0]])
    assert logprob_metrics(rollout, trainer, recomputed=True) == {"generation/logprobs_recomputed": 1.0,
                                                                  "generation/logprob_abs_diff_max": 0.25}
    assert logprob_metrics(rollout, trainer, recomputed=False) == {"generation/logprobs_recomputed": 0.0}


def test_urls_with_or_without_v1_and_bad_backend_settings():
    assert split_url("http://h:1/v1/") == ("http://h:1/v1", "http://h:1")
    assert split_url("http://h:1") == ("http://h:1/v1", "http://h:1")
    with pytest.raises(GenerationServerError, match="must start with http"):
        split_url("localhost:8000")
    with pytest.raises(ValueError, match="sync must be one of"):
        ServerBackend("http://h:1", sync="nccl")


def test_config_options_for_the_server_are_validated_and_select_the_backend(tmp_path):
    cfg = RLConfig(algo="grpo", generation_server="http://127.0.0.1:9/v1", generation_model="m", out=str(tmp_path))
    backend = backend_for(cfg)
    assert isinstance(backend, ServerBackend) and backend.model == "m" and backend.sync == "auto"
    assert backend.work_dir == tmp_path / "weight_sync"
    assert isinstance(backend_for(RLConfig()), TorchBackend)
    with pytest.raises(ConfigError) as err:
        RLConfig(generation_server="127.0.0.1:8000", generation_concurrency=0).validate()
    assert "http:// or https:// URL" in str(err.value) and "generation_concurrency" in str(err.value)
    with pytest.raises(ConfigError, match="generation_model, generation_sync set without generation_server"):
        RLConfig(generation_model="m", generation_sync="none").validate()
    with pytest.raises(ConfigError, match="generation_sync=lora needs a LoRA policy"):
        RLConfig(generation_server="http://h:1", generation_sync="lora").validate()


def test_trl_names_for_the_vllm_server():
    cfg = build_config(RLConfig, {"algo": "grpo", "vllm_server_base_url": "http://h:8000"})
    assert cfg.generation_server == "http://h:8000"
    with pytest.raises(ConfigError, match="no colocated vLLM"):
        build_config(RLConfig, {"algo": "grpo", "use_vllm": True})


def test_rollouts_from_the_server_are_rollouts():
    with Scripted(echo_prompt) as server:
        rollout = ServerBackend(server.url).generate(None, [[5], [6]], PARAMS, eos_token_id=EOS, pad_token_id=PAD)
    assert isinstance(rollout, Rollout) and rollout.input_ids.shape == (2, 3)


class Recording(TorchBackend):
    """The in-process sampler, recording every sync_weights call: (version, a checksum of the weights)."""

    def __init__(self):
        super().__init__()
        self.synced = []

    def sync_weights(self, model, version):
        self.synced.append((version, float(sum(p.detach().double().sum() for p in model.parameters()))))


class Scrambled(RewardProvider):
    """A reward that differs within almost every group (character codes mod 7), so every update moves the weights."""

    def score(self, samples):
        return [Reward(float(sum(map(ord, s.completion)) % 7)) for s in samples]


def test_the_rl_loop_syncs_the_starting_weights_then_each_update_and_a_resumed_run_its_own(tiny_model_path, tmp_path):
    from rewardhub.recipes.rl import train_rl

    kw = dict(model=str(tiny_model_path), algo="grpo", data="arithmetic", data_args={"size": 16}, max_steps=3,
              batch_size=2, num_generations=2, max_new_tokens=4, lr=5e-2, warmup_ratio=0.0, log_every=1,
              eval_every=0, save_every=0, eval_size=2, threads=1, completions_every=0, kl_coef=0.0)
    straight = Recording()
    train_rl(RLConfig(out=str(tmp_path / "a"), **kw), provider=Scrambled(), backend=straight)
    versions = [v for v, _ in straight.synced]
    sums = [s for _, s in straight.synced]
    assert versions == [0, 1, 2, 3] and len(set(sums)) == 4  # every update changed what was sent

    def interrupt(step, metrics):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_rl(RLConfig(out=str(tmp_path / "b"), **kw), provider=Scrambled(), backend=Recording(),
                 callbacks=[interrupt])
    resumed = Recording()
    train_rl(RLConfig(out=str(tmp_path / "b"), **kw), provider=Scrambled(), backend=resumed)
    assert [v for v, _ in resumed.synced] == [2, 3]
    assert resumed.synced[0][1] == pytest.approx(sums[2], rel=1e-9)  # the resumed weights, before its first rollout
