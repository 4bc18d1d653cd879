"""``rewardhub serve``'s rollout routes in-process: token-id completions with our log-probs, adapters, weights."""

import json
import urllib.error
import urllib.request

import pytest
import torch

from rewardhub.errors import GenerationServerError
from rewardhub.generation import SamplingParams, TorchBackend
from rewardhub.generation_server import ServerBackend, state_dict_bytes
from rewardhub.logprobs import sequence_logprobs
from rewardhub.models import LoraOptions, load_model, load_tokenizer
from rewardhub_judge.server import ServerThread, create_app, load_local_model


def post(url, body, key=None):
    """(status, JSON or text) of a POST."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


@pytest.fixture
def served(tiny_model_path):
    local = load_local_model(str(tiny_model_path), name="tiny")
    with ServerThread(create_app(local)) as thread:
        yield thread, local


@pytest.fixture
def trainer(tiny_model_path):
    tok = load_tokenizer(str(tiny_model_path))
    return load_model(str(tiny_model_path), tokenizer=tok), tok


def greedy(model, tok, prompt="12+34="):
    return TorchBackend().generate(model, [tok(prompt)["input_ids"]], SamplingParams(10, 0.0),
                                   eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id)


def test_token_id_completions_carry_the_trainers_log_probs_and_repeat_with_a_seed(served, trainer):
    thread, _ = served
    model, tok = trainer
    prompt = tok("12+34=")["input_ids"]
    body = {"model": "tiny", "prompt": prompt, "n": 3, "max_tokens": 8, "temperature": 0.8, "top_k": 20,
            "top_p": 0.9, "seed": 11, "logprobs": 1, "return_token_ids": True, "return_tokens_as_token_ids": True,
            "stop_token_ids": [tok.eos_token_id]}
    status, first = post(thread.url + "/completions", body)
    assert status == 200, first
    assert post(thread.url + "/completions", body)[1]["choices"] == first["choices"]  # same seed, same samples
    for c in first["choices"]:
        ids = c["token_ids"]
        assert c["logprobs"]["tokens"] == [f"token_id:{t}" for t in ids]
        assert c["finish_reason"] == ("stop" if ids[-1] == tok.eos_token_id else "length")
        full = torch.tensor([prompt + ids])
        mine = sequence_logprobs(model, full, torch.ones_like(full), len(prompt), 0.8)[0]
        assert torch.allclose(mine, torch.tensor(c["logprobs"]["token_logprobs"]), atol=1e-4)
    status, text = post(thread.url + "/completions", {"model": "tiny", "prompt": "7+1=", "max_tokens": 3,
                                                      "temperature": 0})
    assert status == 200 and text["choices"][0]["logprobs"] is None and text["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"model": "other", "prompt": [5]}, 404, "does not exist"),
    ({"model": "tiny", "prompt": [5], "stop": ["\n"]}, 400, "use stop_token_ids"),
    ({"model": "tiny", "prompt": [99999]}, 400, "outside the vocabulary"),
    ({"model": "tiny", "prompt": []}, 400, "prompt is empty"),
    ({"model": "tiny", "prompt": [5], "top_p": 0}, 400, "top_p must be in"),
])
def test_completions_refuse_what_they_cannot_do_and_say_what_to_send(served, body, status, needle):
    got, answer = post(served[0].url + "/completions", body)
    assert got == status and needle in answer["error"]["message"]


def test_full_weights_as_bytes_or_from_disk_make_the_server_sample_like_the_trainer(served, trainer, tmp_path):
    thread, local = served
    model, tok = trainer
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(p.numel())))
    backend = ServerBackend(thread.url)
    before = backend.generate(model, [tok("12+34=")["input_ids"]], SamplingParams(10, 0.0),
                              eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    mine = greedy(model, tok)
    assert not torch.allclose(before.logprobs, mine.logprobs, atol=1e-3)  # the update has something to change
    backend.sync_weights(model, 1)
    after = backend.generate(model, [tok("12+34=")["input_ids"]], SamplingParams(10, 0.0),
                             eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    assert torch.equal(after.completion_ids, mine.completion_ids)
    assert torch.allclose(after.logprobs, mine.logprobs, atol=1e-5)
    assert post(thread.url.removesuffix("/v1") + "/update_weights_from_disk",
                {"model_path": str(tmp_path / "nothing")})[0] == 400
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(1.5)
    on_disk = ServerBackend(thread.url, sync_dir=tmp_path / "shared")
    on_disk.sync_weights(model, 2)
    assert (tmp_path / "shared" / "full-v2" / "model.safetensors").is_file()
    assert torch.equal(local.model.get_input_embeddings().weight, model.get_input_embeddings().weight)
    health = json.load(urllib.request.urlopen(thread.url.removesuffix("/v1") + "/health"))
    assert health["weight_version"] == "2" and health["logprobs"] == "rewardhub"


def test_a_bad_weight_update_changes_nothing_and_says_why(served, trainer):
    thread, local = served
    model, _ = trainer
    backend = ServerBackend(thread.url)
    before = {k: v.clone() for k, v in local.model.state_dict().items()}
    extra = torch.nn.Linear(3, 3)
    with pytest.raises(GenerationServerError, match="tensor name"):
        backend._sync_full_bytes(extra, 1)
    assert all(torch.equal(before[k], v) for k, v in local.model.state_dict().items())
    assert len(state_dict_bytes(model)) > 0


def test_lora_adapters_load_serve_by_name_and_unload(served, tiny_model_path, trainer, tmp_path):
    thread, local = served
    _, tok = trainer
    policy = load_model(str(tiny_model_path), tokenizer=tok, lora=LoraOptions(r=4, alpha=16))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.5 * torch.randn_like(p, generator=torch.Generator().manual_seed(1)))
    backend = ServerBackend(thread.url, work_dir=tmp_path)
    backend.sync_weights(policy, 0)
    assert backend.adapter == "rewardhub-lora-v0" and local.adapters
    served_now = backend.generate(policy, [tok("12+34=")["input_ids"]], SamplingParams(10, 0.0),
                                  eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    mine = greedy(policy, tok)
    assert torch.equal(served_now.completion_ids, mine.completion_ids)
    assert torch.allclose(served_now.logprobs, mine.logprobs, atol=1e-5)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_A" in name:
                p.mul_(-1.0)
    backend.sync_weights(policy, 1)  # loads v1, unloads v0, deletes v0's files
    assert sorted(local.adapters) == ["rewardhub-lora-v1"] and not (tmp_path / "lora-v0").exists()
    listed = json.load(urllib.request.urlopen(thread.url + "/models"))
    assert [m["id"] for m in listed["data"]] == ["tiny", "rewardhub-lora-v1"]
    base = ServerBackend(thread.url, model="tiny").generate(
        policy, [tok("12+34=")["input_ids"]], SamplingParams(10, 0.0), eos_token_id=[tok.eos_token_id],
        pad_token_id=tok.pad_token_id)
    with policy.disable_adapter():
        plain = greedy(policy, tok)
    assert torch.allclose(base.logprobs, plain.logprobs, atol=1e-5)  # the base stays the base
    status, chat = post(thread.url + "/chat/completions", {"model": "tiny", "max_tokens": 3, "temperature": 0,
                                                            "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and chat["choices"][0]["message"]["role"] == "assistant"
    assert post(thread.url + "/unload_lora_adapter", {"lora_name": "nope"})[0] == 404
    assert post(thread.url + "/load_lora_adapter", {"lora_name": "x", "lora_path": str(tmp_path)})[0] == 400


def test_weight_routes_can_be_switched_off_and_need_the_key(tiny_model_path):
    local = load_local_model(str(tiny_model_path), name="tiny")
    with ServerThread(create_app(local, weight_updates=False)) as thread:
        status, answer = post(thread.url + "/load_lora_adapter", {"lora_name": "a", "lora_path": "/tmp"})
        assert status == 403 and "--no-weight-updates" in answer["error"]["message"]
    with ServerThread(create_app(local, api_key="k")) as thread:
        root = thread.url.removesuffix("/v1")
        assert post(root + "/update_weights_from_disk", {"model_path": "/tmp"})[0] == 401
        assert post(root + "/update_weights_from_disk", {"model_path": "/tmp"}, key="k")[0] == 400


def test_a_completions_request_whose_client_went_away_never_runs(served):
    """The model is busy; the client gives up; the request is dropped before it reaches the model."""
    import socket
    import time

    thread, local = served
    body = json.dumps({"model": "tiny", "prompt": [5, 6], "max_tokens": 4}).encode()
    host, port = thread.url.split("//", 1)[1].split("/", 1)[0].split(":")
    with local.lock:
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            deadline = time.monotonic() + 5
            while local.in_flight == 0 and time.monotonic() < deadline:  # it waits for the lock ...
                time.sleep(0.01)
            assert local.in_flight == 1
        deadline = time.monotonic() + 5  # ... and its client hangs up
        while local.cancelled == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert local.cancelled == 1 and local.requests == 0
    deadline = time.monotonic() + 5
    while local.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert local.in_flight == 0 and local.requests == 0  # it never generated
    assert post(thread.url + "/completions", {"model": "tiny", "prompt": [5], "max_tokens": 2})[0] == 200


def test_a_completion_in_progress_stops_at_the_next_token_when_told(served):
    from rewardhub.generation import GenerationStopped
    from rewardhub_judge.completions import CompletionRequest, Weights, complete

    _, local = served
    looks = []

    def stop_on_the_fourth_look():
        looks.append(1)
        return len(looks) > 3

    request = CompletionRequest(model="tiny", prompt=[5, 6], max_tokens=200, ignore_eos=True,
                                stop_token_ids=[local.tokenizer.eos_token_id], temperature=1.0, seed=0)
    with pytest.raises(GenerationStopped, match="after 4 of 200 tokens"):
        complete(Weights(local), request, stop_on_the_fourth_look)
    assert len(looks) == 4

