"""Tests for the rollout engine (rewardhub.generation): masks, positions, log-probs, sampling, backends."""

from __future__ import annotations

import pytest
import torch
import transformers

from rewardhub.generation import (
    GenerationBackend,
    Rollout,
    SamplingParams,
    TorchBackend,
    _left_pad,
    _sample,
    _top_k_filter,
    _top_p_filter,
    generate_text,
)
from rewardhub.logprobs import position_ids_of as _position_ids
from rewardhub.logprobs import sequence_logprobs

PAD, EOS, BOS = 0, 1, 2
PROMPTS = [[BOS, 5, 6, 7, 8, 9, 10], [BOS, 11], [BOS, 12, 13, 14], [BOS, 20, 21, 22, 23]]


def _tiny_llama(seed: int = 0, vocab_size: int = 64) -> transformers.LlamaForCausalLM:
    cfg = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=BOS,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model() -> transformers.LlamaForCausalLM:
    return _tiny_llama()


def _gen(model, prompts=PROMPTS, backend=None, eos=EOS, seed=None, **params) -> Rollout:
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    backend = backend or TorchBackend()
    return backend.generate(
        model, prompts, SamplingParams(**params), eos_token_id=eos, pad_token_id=PAD, generator=g
    )


def _eos_candidate(greedy: torch.Tensor, row: int, step: int, avoid_rows: list[int]) -> int:
    """A token that greedy decoding emits first at (row, step) and never in ``avoid_rows``: used as EOS."""
    tok = int(greedy[row, step])
    assert tok not in greedy[row, :step].tolist(), "pick another (row, step): token occurs earlier in the row"
    for r in avoid_rows:
        assert tok not in greedy[r].tolist(), (
            "pick another (row, step): token occurs in a row that must not stop"
        )
    return tok


# --------------------------------------------------------------------------------------------------------
# 1. log-probs match a fresh forward pass
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("top", [{}, {"top_k": 10, "top_p": 0.9}])
def test_logprobs_match_fresh_forward(model, top):
    r = _gen(model, max_new_tokens=12, temperature=0.7, seed=0, **top)
    assert r.prompt_mask[:, 0].tolist() == [1, 0, 0, 0]  # left padded, lengths differ
    fresh = sequence_logprobs(model, r.input_ids, r.attention_mask, r.prompt_length, temperature=0.7)
    assert fresh.shape == r.logprobs.shape
    torch.testing.assert_close(fresh, r.logprobs, atol=1e-5, rtol=0)
    assert (r.logprobs[r.completion_mask.bool()] < 0).all()


def test_logprobs_match_with_early_eos_and_compaction(model):
    """Rows stopping early are dropped from the batch (and cache); the survivors' log-probs stay exact."""
    greedy = _gen(model, max_new_tokens=10, temperature=0).completion_ids
    eos = _eos_candidate(greedy, row=0, step=2, avoid_rows=[1])
    for backend in (TorchBackend(), TorchBackend(compact_finished=False, preallocate_cache=False)):
        r = _gen(model, backend=backend, eos=eos, max_new_tokens=10, temperature=0)
        torch.testing.assert_close(r.completion_ids[0, :3], greedy[0, :3])
        assert r.completion_lengths[0] == 3 and bool(r.eos_reached[0])
        fresh = sequence_logprobs(model, r.input_ids, r.attention_mask, r.prompt_length)
        torch.testing.assert_close(fresh, r.logprobs, atol=1e-5, rtol=0)
        # Greedy tokens before EOS do not depend on other rows finishing.
        for i in range(len(PROMPTS)):
            n = int(r.completion_lengths[i])
            assert r.completion_ids[i, :n].tolist() == greedy[i, :n].tolist()


def test_position_ids_helper():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    assert _position_ids(mask).tolist() == [[0, 0, 0, 1, 2, 2], [0, 1, 2, 3, 4, 5]]
    r = Rollout(
        prompt_ids=torch.tensor([[PAD, 5]]),
        prompt_mask=torch.tensor([[0, 1]]),
        completion_ids=torch.tensor([[EOS, PAD]]),
        completion_mask=torch.tensor([[1, 0]]),
        logprobs=torch.tensor([[-1.0, 0.0]]),
        eos_reached=torch.tensor([True]),
    )
    assert r.input_ids.tolist() == [[PAD, 5, EOS, PAD]]
    assert r.attention_mask.tolist() == [[0, 1, 1, 0]]
    assert r.position_ids.tolist() == [[0, 0, 1, 1]]
    assert r.completion_lengths.tolist() == [1] and r.prompt_length == 2 and len(r) == 1


# --------------------------------------------------------------------------------------------------------
# 2-3. greedy equals HF generate; left padding does not change anything
# --------------------------------------------------------------------------------------------------------


def test_greedy_matches_hf_generate(model):
    r = _gen(model, max_new_tokens=10, temperature=0)
    ids, mask, _ = _left_pad(PROMPTS, PAD, torch.device("cpu"))
    hf = model.generate(
        ids, attention_mask=mask, do_sample=False, max_new_tokens=10, pad_token_id=PAD, eos_token_id=EOS
    )
    assert torch.equal(r.prompt_ids, ids)
    assert r.completion_ids.tolist() == hf[:, ids.shape[1] :].tolist()


def test_left_padding_is_transparent(model):
    ids, mask, _ = _left_pad(PROMPTS, PAD, torch.device("cpu"))
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask, position_ids=_position_ids(mask)).logits[:, -1]
        for i, p in enumerate(PROMPTS):
            alone = model(input_ids=torch.tensor([p])).logits[:, -1]
            torch.testing.assert_close(padded[i : i + 1], alone, atol=1e-5, rtol=0)
    batched = _gen(model, max_new_tokens=8, temperature=0)
    for i, p in enumerate(PROMPTS):
        single = _gen(model, prompts=[p], max_new_tokens=8, temperature=0)
        assert single.prompt_mask.all()
        assert single.completion_ids[0].tolist() == batched.completion_ids[i].tolist()
        torch.testing.assert_close(single.logprobs[0], batched.logprobs[i], atol=1e-5, rtol=0)


def test_backend_options_do_not_change_greedy_output(model):
    prompts = [*PROMPTS, PROMPTS[1], PROMPTS[0]]  # duplicates exercise the shared prefill
    ref = _gen(
        model,
        prompts,
        TorchBackend(share_prompt_prefill=False, compact_finished=False, preallocate_cache=False),
        max_new_tokens=9,
        temperature=0,
    )
    fast = _gen(model, prompts, TorchBackend(), max_new_tokens=9, temperature=0)
    assert fast.completion_ids.tolist() == ref.completion_ids.tolist()
    torch.testing.assert_close(fast.logprobs, ref.logprobs, atol=1e-5, rtol=0)
    assert fast.completion_ids[4].tolist() == fast.completion_ids[1].tolist()


# --------------------------------------------------------------------------------------------------------
# 4. masking after EOS
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_list", [False, True])
def test_masking_after_eos(model, as_list):
    greedy = _gen(model, max_new_tokens=10, temperature=0).completion_ids
    eos = _eos_candidate(greedy, row=2, step=3, avoid_rows=[0])
    r = _gen(model, eos=[EOS, eos] if as_list else eos, max_new_tokens=10, temperature=0)
    assert r.completion_ids.shape[1] == 10  # row 0 never stops, so all steps run
    assert r.completion_ids[2, 3] == eos and r.completion_mask[2, 3] == 1  # EOS itself is kept
    assert r.completion_ids[2, 4:].eq(PAD).all() and r.completion_mask[2, 4:].eq(0).all()
    assert r.logprobs[2, 4:].eq(0).all() and r.logprobs[2, 3] < 0
    assert r.completion_mask[2, :4].eq(1).all()
    assert bool(r.eos_reached[2]) and not bool(r.eos_reached[0])
    assert r.completion_mask[0].eq(1).all() and r.completion_lengths[2] == 4
    for i in range(len(PROMPTS)):
        n = int(r.completion_lengths[i])
        assert bool(r.eos_reached[i]) == (int(r.completion_ids[i, n - 1]) in (EOS, eos))
        assert r.completion_ids[i, n:].eq(PAD).all() and r.completion_mask[i, n:].eq(0).all()


def _force_token(model, token: int) -> None:
    """Give the LM head a bias so ``token`` dominates every step (forces EOS deterministically)."""
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[token] = 100.0
    model.lm_head = head


def test_stops_when_every_row_emitted_eos():
    model = _tiny_llama()
    _force_token(model, EOS)
    r = _gen(model, max_new_tokens=10, temperature=1.0, seed=0)
    assert r.completion_ids.shape == (len(PROMPTS), 1)
    assert r.completion_ids.eq(EOS).all() and r.completion_mask.eq(1).all() and r.eos_reached.all()


# --------------------------------------------------------------------------------------------------------
# 5. sampling: reproducibility, top-k, top-p
# --------------------------------------------------------------------------------------------------------


def test_same_seed_same_samples(model):
    a = _gen(model, max_new_tokens=12, temperature=1.0, seed=123)
    b = _gen(model, max_new_tokens=12, temperature=1.0, seed=123)
    c = _gen(model, max_new_tokens=12, temperature=1.0, seed=124)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.completion_ids, c.completion_ids)


def test_top_k_one_is_greedy(model):
    greedy = _gen(model, max_new_tokens=10, temperature=0)
    topk1 = _gen(model, max_new_tokens=10, temperature=0.8, top_k=1, seed=5)
    assert topk1.completion_ids.tolist() == greedy.completion_ids.tolist()


def test_duplicate_prompts_sample_independently(model):
    r = _gen(model, [PROMPTS[0]] * 8, max_new_tokens=6, temperature=1.0, seed=0)
    assert len({tuple(row) for row in r.completion_ids.tolist()}) > 1


def test_top_p_filter_keeps_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3], [0.25, 0.25, 0.25, 0.25]])
    logits = probs.log()
    kept = _top_p_filter(logits, 0.8).isfinite()
    assert kept[0].tolist() == [False, True, False, True]  # 0.5 + 0.3 reaches 0.8
    assert kept[1].all()  # uniform: 0.75 before the last token < 0.8
    assert _top_p_filter(logits, 0.81).isfinite()[0].tolist() == [False, True, True, True]
    assert _top_p_filter(logits, 0.1).isfinite()[0].tolist() == [False, True, False, False]  # argmax kept
    assert torch.equal(_top_p_filter(logits, 1.0), logits)
    assert _top_k_filter(logits, 2).isfinite()[0].tolist() == [False, True, False, True]
    assert torch.equal(_top_k_filter(logits, 0), logits)


@pytest.mark.parametrize(
    ("top_k", "top_p", "allowed"),
    [(0, 0.8, {1, 3}), (3, 1.0, {1, 2, 3}), (3, 0.6, {1, 3}), (0, 1.0, {0, 1, 2, 3})],
)
def test_sampler_respects_filters_and_distribution(top_k, top_p, allowed):
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log().repeat(4000, 1)
    params = SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p)
    tokens, lp = _sample(logits, params, torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) == allowed
    torch.testing.assert_close(lp, probs.log()[tokens])  # log-probs are pre-filtering
    kept = probs * torch.tensor([i in allowed for i in range(4)])
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    torch.testing.assert_close(freq, kept / kept.sum(), atol=0.03, rtol=0)


def test_temperature_zero_logprob_uses_temperature_one():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    tokens, lp = _sample(logits, SamplingParams(temperature=0), None)
    assert tokens.tolist() == [0]
    torch.testing.assert_close(lp, logits.log_softmax(-1)[:, 0])


# --------------------------------------------------------------------------------------------------------
# 6. validation and contracts
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_sampling_params_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_sampling_params_defaults():
    p = SamplingParams()
    assert (p.max_new_tokens, p.temperature, p.top_p, p.top_k) == (32, 1.0, 1.0, 0)
    assert SamplingParams(temperature=0).greedy and SamplingParams(temperature=0).logprob_temperature == 1.0


def test_pad_eos_and_prompt_checks(model):
    backend = TorchBackend()
    params = SamplingParams(max_new_tokens=2)
    with pytest.raises(ValueError, match="distinct"):
        backend.generate(model, PROMPTS, params, eos_token_id=EOS, pad_token_id=EOS)
    with pytest.raises(ValueError, match="distinct"):
        backend.generate(model, PROMPTS, params, eos_token_id=[5, PAD], pad_token_id=PAD)
    with pytest.raises(ValueError, match="pad_token_id is None"):
        backend.generate(model, PROMPTS, params, eos_token_id=EOS, pad_token_id=None)
    with pytest.raises(ValueError, match="empty"):
        backend.generate(model, [[BOS], []], params, eos_token_id=EOS, pad_token_id=PAD)
    with pytest.raises(ValueError, match="empty"):
        backend.generate(model, [], params, eos_token_id=EOS, pad_token_id=PAD)


def test_mode_restored_and_outputs_usable_by_autograd():
    model = _tiny_llama()
    model.train()
    assert isinstance(TorchBackend(), GenerationBackend)
    r = _gen(model, max_new_tokens=4, temperature=1.0, seed=0)
    assert model.training
    assert not r.logprobs.requires_grad and not r.completion_ids.is_inference()
    # The rollout feeds a training forward pass with gradients (inference tensors would raise here).
    lp = sequence_logprobs(model, r.input_ids, r.attention_mask, r.prompt_length)
    (lp * r.completion_mask).sum().backward()
    assert model.lm_head.weight.grad is not None


def test_peft_wrapped_model(model):
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(_tiny_llama(), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    r = _gen(wrapped, max_new_tokens=6, temperature=0.9, seed=0)
    fresh = sequence_logprobs(wrapped, r.input_ids, r.attention_mask, r.prompt_length, temperature=0.9)
    torch.testing.assert_close(fresh, r.logprobs, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------------
# generate_text
# --------------------------------------------------------------------------------------------------------


def test_generate_text():
    from rewardhub.testing import build_tokenizer

    tok = build_tokenizer()
    model = _tiny_llama(vocab_size=len(tok))
    model.config.eos_token_id = model.generation_config.eos_token_id = tok.eos_token_id
    prompts = ["1+1=", "hello there, ", "<|user|>hi<eos><|assistant|>"]
    params = SamplingParams(max_new_tokens=8, temperature=0)
    texts = generate_text(model, tok, prompts, params, batch_size=2)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    # Batching (and so padding) does not change greedy text.
    assert texts == [generate_text(model, tok, [p], params)[0] for p in prompts]
    # A completion that stops at EOS decodes to the text before it.
    _force_token(model, tok.eos_token_id)
    assert generate_text(model, tok, prompts, params) == ["", "", ""]
