"""Hand-computed and independent-reference checks for rewardhub.maths.rl."""

import math

import pytest
import torch

from rewardhub.logprobs import token_logprobs as token_logps
from rewardhub.maths.rl import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    explained_variance,
    gae,
    grpo_advantages,
    kl_penalty,
    masked_mean,
    masked_var,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    token_level_rewards,
)

NAN = float("nan")


def close(actual, expected, atol=1e-5):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=1e-5, equal_nan=True)


# ----------------------------------------------------------------------------------------------- masked stats


def test_masked_mean_ignores_padding_even_nan():
    x = torch.tensor([[1.0, 2.0, NAN], [3.0, math.inf, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    close(masked_mean(x, mask), 2.0)  # (1 + 2 + 3) / 3
    close(masked_mean(x, mask, dim=1), [1.5, 3.0])
    close(masked_mean(x, mask.bool(), dim=0), [2.0, 2.0, 0.0])  # empty column -> 0, not nan


def test_masked_mean_empty_mask_is_zero_with_zero_grad():
    x = torch.tensor([[1.0, 2.0]], requires_grad=True)
    out = masked_mean(x, torch.zeros(1, 2))
    out.backward()
    assert out.item() == 0.0
    assert torch.equal(x.grad, torch.zeros(1, 2))


def test_masked_mean_rejects_mismatched_mask():
    with pytest.raises(ValueError, match="shape"):
        masked_mean(torch.zeros(2, 3), torch.ones(2, 2))


def test_masked_var_biased_and_unbiased():
    x = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean 2, squared deviations 1 + 0 + 1 = 2 -> population 2/3, sample 2/2 = 1
    close(masked_var(x, mask, unbiased=False), 2.0 / 3.0)
    close(masked_var(x, mask), 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(x, torch.tensor([[1, 0, 0, 0]]))


def test_masked_whiten_shift_and_no_shift():
    x = torch.tensor([[2.0, 4.0], [6.0, -7.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    # mean 4, unbiased var (4 + 0 + 4) / 2 = 4, std 2
    close(masked_whiten(x, mask), [[-1.0, 0.0], [1.0, 0.0]])
    # shift_mean=False adds the original mean back (lm-human-preferences / TRL): (x - 4) / 2 + 4
    close(masked_whiten(x, mask, shift_mean=False), [[3.0, 4.0], [5.0, 0.0]])


# ----------------------------------------------------------------------------------------------------- KL


def test_kl_estimators_hand_values():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    # log ratio = logp - ref = [0.5, -1.0]; log r = [-0.5, 1.0]
    close(kl_penalty(logp, ref, "k1"), [[0.5, -1.0]])
    close(kl_penalty(logp, ref, "k2"), [[0.125, 0.5]])
    # k3 = r - 1 - log r: exp(-0.5) - 1 + 0.5 = 0.1065307, e - 1 - 1 = 0.7182818
    close(kl_penalty(logp, ref, "k3"), [[0.1065307, 0.7182818]])
    close(kl_penalty(logp, ref, "k3", mask=torch.tensor([[0, 1]])), [[0.0, 0.7182818]])


def test_kl_estimators_match_formulas_and_k3_nonnegative():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(4, 7, generator=g) * 5
    ref = -torch.rand(4, 7, generator=g) * 5
    d = logp - ref
    close(kl_penalty(logp, ref, "k1"), d)
    close(kl_penalty(logp, ref, "k2"), 0.5 * d**2)
    r = torch.exp(ref - logp)
    close(kl_penalty(logp, ref, "k3"), (r - 1) - torch.log(r), atol=1e-4)
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    assert (kl_penalty(logp, ref, "k1") < 0).any()  # k1 is not a per-token bound; k3 is


def test_k1_and_k3_are_unbiased_monte_carlo():
    # Exact KL(p || q) of two categoricals vs the sample mean of k1 and k3 over tokens drawn from p.
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())  # 0.5 ln 2.5 + 0.2 ln 0.4 = 0.27490
    assert exact == pytest.approx(0.2749, abs=1e-4)
    idx = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(1))
    logp, logq = p.log()[idx][None], q.log()[idx][None]
    assert kl_penalty(logp, logq, "k1").mean().item() == pytest.approx(exact, abs=0.01)
    assert kl_penalty(logp, logq, "k3").mean().item() == pytest.approx(exact, abs=0.01)


def test_kl_unknown_estimator_lists_valid_ones():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


def test_token_level_rewards_score_at_last_real_token():
    scores = torch.tensor([1.0, -0.5])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # row 0: -0.5 * kl, score on t=2 -> [-0.05, -0.10, -0.15 + 1]
    # row 1: last real token is t=1 -> [-0.20, -0.25 - 0.5, 0 (padding)]
    close(token_level_rewards(scores, kl, mask, kl_coef=0.5), [[-0.05, -0.1, 0.85], [-0.2, -0.75, 0.0]])


def test_token_level_rewards_empty_row_raises():
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        token_level_rewards(torch.zeros(2), torch.zeros(2, 2), torch.tensor([[1, 0], [0, 0]]), 0.1)


# -------------------------------------------------------------------------------------------------------- GAE


def test_gae_hand_example_gamma_09_lam_08():
    # T = 3, gamma = 0.9, lam = 0.8 (gamma * lam = 0.72), r = [1, 0, 2], V = [0.5, 1.0, 1.5], V_3 = 0
    #   delta_2 = 2 + 0.9*0   - 1.5 = 0.5        A_2 = 0.5
    #   delta_1 = 0 + 0.9*1.5 - 1.0 = 0.35       A_1 = 0.35 + 0.72*0.5  = 0.71
    #   delta_0 = 1 + 0.9*1.0 - 0.5 = 1.4        A_0 = 1.4  + 0.72*0.71 = 1.9112
    # returns = A + V = [2.4112, 1.71, 2.0]
    # Row 1 is the same episode cut after t=1 (t=2 is padding with garbage reward/value 99):
    #   delta_1 = 0 + 0 - 1.0 = -1.0             A_1 = -1.0
    #   delta_0 = 1.4                            A_0 = 1.4 - 0.72 = 0.68
    rewards = torch.tensor([[1.0, 0.0, 2.0], [1.0, 0.0, 99.0]])
    values = torch.tensor([[0.5, 1.0, 1.5], [0.5, 1.0, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    close(adv, [[1.9112, 0.71, 0.5], [0.68, -1.0, 0.0]])
    close(ret, [[2.4112, 1.71, 2.0], [1.18, 0.0, 0.0]])


def _naive_gae(rewards, values, length, gamma, lam):
    """Textbook definition A_t = sum_l (gamma*lam)^l delta_{t+l}, double loop, one row, V_length = 0."""
    v = [*values[:length], 0.0]
    delta = [rewards[t] + gamma * v[t + 1] - v[t] for t in range(length)]
    return [sum((gamma * lam) ** (k - t) * delta[k] for k in range(t, length)) for t in range(length)]


def test_gae_matches_naive_double_loop():
    g = torch.Generator().manual_seed(0)
    B, T, gamma, lam = 5, 8, 0.97, 0.9
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = [8, 5, 1, 3, 7]
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    for b, n in enumerate(lengths):
        expected = _naive_gae(rewards[b].tolist(), values[b].tolist(), n, gamma, lam)
        close(adv[b, :n], expected, atol=1e-10)
        close(ret[b, :n], torch.tensor(expected, dtype=torch.float64) + values[b, :n], atol=1e-10)
        assert (adv[b, n:] == 0).all() and (ret[b, n:] == 0).all()


def test_gae_lam_1_gamma_1_is_return_to_go_minus_value():
    rewards = torch.tensor([[0.0, -0.1, 1.0]])
    values = torch.tensor([[0.3, 0.2, 0.9]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    close(ret, [[0.9, 0.9, 1.0]])  # Monte-Carlo return-to-go
    close(adv, [[0.6, 0.7, 0.1]])


def test_gae_skips_holes_in_mask():
    # A masked position in the middle (e.g. tool output) is skipped: [r0, x, r2] with mask [1, 0, 1]
    # gives the same advantages as the two-token episode [r0, r2].
    rewards = torch.tensor([[1.0, 50.0, 2.0]])
    values = torch.tensor([[0.5, 50.0, 1.5]])
    adv, _ = gae(rewards, values, torch.tensor([[1, 0, 1]]), gamma=0.9, lam=0.8)
    ref, _ = gae(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 1.5]]), torch.ones(1, 2), gamma=0.9, lam=0.8)
    close(adv, [[ref[0, 0].item(), 0.0, ref[0, 1].item()]])


# ------------------------------------------------------------------------------------------------ GRPO / RLOO


def test_grpo_hand_values_and_torch_std_reference():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    # group 1: mean 0.5, unbiased std sqrt((4 * 0.25) / 3) = 0.5773503 -> +-0.5 / (0.5773503 + 1e-4)
    # group 2: all equal -> 0
    a = 0.8658754
    close(grpo_advantages(scores, 4), [a, -a, -a, a, 0.0, 0.0, 0.0, 0.0])
    close(grpo_advantages(scores, 4, scale_by_std=False), [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    # TRL's formula, written independently with torch.std (unbiased by default)
    g = torch.randn(12, generator=torch.Generator().manual_seed(0)).view(3, 4)
    expected = ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)).reshape(-1)
    close(grpo_advantages(g.reshape(-1), 4), expected)


def test_grpo_invalid_samples_excluded():
    scores = torch.tensor([1.0, 0.0, 5.0, 1.0, 3.0, 9.0, 4.0, 4.0])
    valid = torch.tensor([True, True, False, True, True, False, False, False])
    # group 1 valid scores [1, 0, 1]: mean 2/3, deviations [1/3, -2/3, 1/3], unbiased var (1+4+1)/9/2 = 1/3
    # -> [1/3, -2/3, 1/3] / (0.5773503 + 1e-4); the invalid 5.0 gets 0 and does not move the mean.
    # group 2 has a single valid sample -> all 0 (no baseline, and no nan from the 0/0 std).
    adv = grpo_advantages(scores, 4, valid=valid)
    close(adv, [0.5772503, -1.1545006, 0.0, 0.5772503, 0.0, 0.0, 0.0, 0.0])
    # groups of 2: [1, 0] -> +-0.5 / (sqrt(0.5) + 1e-4) = +-0.7070068; the rest have < 2 valid samples
    adv2 = grpo_advantages(scores, 2, valid=valid)
    close(adv2, [0.7070068, -0.7070068, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])


def test_grpo_rejects_ragged_groups():
    with pytest.raises(ValueError, match="groups of 4"):
        grpo_advantages(torch.zeros(6), 4)


def test_rloo_hand_values_and_identity():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0])
    # mean of the others: [11/3, 10/3, 3, 2] -> A = [-8/3, -4/3, 0, 4]
    close(rloo_advantages(scores, 4), [-8 / 3, -4 / 3, 0.0, 4.0])
    g = torch.randn(15, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k = 5
    grouped = g.view(-1, k)
    identity = (k / (k - 1) * (grouped - grouped.mean(1, keepdim=True))).reshape(-1)
    close(rloo_advantages(g, k), identity, atol=1e-12)


def test_rloo_invalid_and_small_groups():
    scores = torch.tensor([1.0, 2.0, 100.0, 6.0, 4.0, 7.0, 8.0, 9.0])
    valid = torch.tensor([1, 1, 0, 1, 1, 0, 0, 0]).bool()
    # group 1 valid [1, 2, 6]: baselines (2+6)/2=4, (1+6)/2=3.5, (1+2)/2=1.5 -> [-3, -1.5, 0, 4.5]
    # group 2 has one valid sample -> all 0
    close(rloo_advantages(scores, 4, valid=valid), [-3.0, -1.5, 0.0, 4.5, 0.0, 0.0, 0.0, 0.0])


# ----------------------------------------------------------------------------------------------------- losses


def _policy_case():
    # log ratios ln[1, 1.5, 0.5, 1.1] plus a padding token with a wild ratio and advantage
    log_ratio = torch.log(torch.tensor([[1.0, 1.5, 0.5, 1.1, 1e30]]))
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -1.0]])
    logprobs = (old + log_ratio).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -2.0, 1e6]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    return logprobs, old, adv, mask


def test_ppo_policy_loss_hand_example():
    logprobs, old, adv, mask = _policy_case()
    # per token max(-A r, -A clip(r, 0.8, 1.2)):
    #   r=1.0, A=1:  max(-1.0, -1.0) = -1.0   (not clipped)
    #   r=1.5, A=1:  max(-1.5, -1.2) = -1.2   (clipped)
    #   r=0.5, A=-1: max( 0.5,  0.8) =  0.8   (clipped)
    #   r=1.1, A=-2: max( 2.2,  2.2) =  2.2   (not clipped)
    # loss = (-1 - 1.2 + 0.8 + 2.2) / 4 = 0.2, clipfrac = 2/4
    loss, stats = ppo_policy_loss(logprobs, old, adv, mask, clip_eps=0.2)
    close(loss.detach(), 0.2)
    close(stats["clipfrac"], 0.5)
    close(stats["ratio_mean"], (1.0 + 1.5 + 0.5 + 1.1) / 4)
    lr = [0.0, math.log(1.5), math.log(0.5), math.log(1.1)]
    close(stats["approx_kl"], 0.5 * sum(x * x for x in lr) / 4)
    close(stats["approx_kl_k3"], sum(math.exp(x) - 1 - x for x in lr) / 4)
    loss.backward()
    # d/dlogp of -A r = -A r / 4 on unclipped tokens, 0 on clipped ones and padding
    close(logprobs.grad, [[-0.25, 0.0, 0.0, 0.55, 0.0]])


def test_ppo_policy_loss_clip_higher_and_sequence_advantages():
    logprobs, old, adv, mask = _policy_case()
    # eps_high = 0.6: r = 1.5 is inside [0.8, 1.6] -> -1.5; loss = (-1 - 1.5 + 0.8 + 2.2) / 4 = 0.125
    loss, stats = ppo_policy_loss(logprobs, old, adv, mask, clip_eps=0.2, clip_eps_high=0.6)
    close(loss.detach(), 0.125)
    close(stats["clipfrac"], 0.25)
    seq_adv = torch.tensor([2.0, -1.0])
    lp = torch.tensor([[-1.0, -1.2, -0.8], [-2.0, -2.0, -2.0]])
    old2 = torch.tensor([[-1.1, -1.0, -1.0], [-2.1, -1.9, -5.0]])
    m = torch.tensor([[1, 1, 1], [1, 1, 0]])
    a, _ = ppo_policy_loss(lp, old2, seq_adv, m)
    b, _ = ppo_policy_loss(lp, old2, seq_adv[:, None].expand(2, 3), m)
    close(a, b.item())


def test_ppo_value_loss_hand_example():
    values = torch.tensor([[1.0, 2.0, 0.0, 7.0]], requires_grad=True)
    old = torch.tensor([[0.5, 2.5, 0.1, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # t0: (1-2)^2 = 1;  v_clip = 0.5 + 0.2 = 0.7 -> (0.7-2)^2 = 1.69 -> 1.69 (clipped)
    # t1: (2-1)^2 = 1;  v_clip = 2.5 - 0.2 = 2.3 -> (2.3-1)^2 = 1.69 -> 1.69 (clipped)
    # t2: 0;            v_clip = 0.1 - 0.1 = 0.0 -> 0                -> 0
    # loss = 0.5 * (1.69 + 1.69 + 0) / 3 = 0.5633333, clipfrac 2/3
    loss, stats = ppo_value_loss(values, old, returns, mask, clip_value=0.2)
    close(loss.detach(), 0.5633333)
    close(stats["value_clipfrac"], 2 / 3)
    loss_unclipped, _ = ppo_value_loss(values, old, returns, mask, clip_value=None)
    close(loss_unclipped.detach(), 0.5 * 2 / 3)


# ------------------------------------------------------------------------------------------ logits and logs


def test_entropy_hand_values_and_stability():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1000.0, 0.0, 0.0, 0.0], [0.0, -math.inf, 0.0, -math.inf]]])
    logits.requires_grad_(True)
    ent = entropy_from_logits(logits)
    close(ent.detach(), [[math.log(4), 0.0, math.log(2)]])
    ent.sum().backward()
    assert torch.isfinite(logits.grad).all()
    g = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(0)) * 4
    close(entropy_from_logits(g), torch.distributions.Categorical(logits=g).entropy())


def test_token_logps_hand_value():
    # p = softmax([0, ln 3]) = [1/4, 3/4]
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    close(token_logps(logits, torch.tensor([[1, 0]])), [[math.log(0.75), math.log(0.25)]])


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    # R - V = [0, 0, 0, 1]: Var = 0.25 - 0.0625 = 0.1875; Var(R) = 1.25 -> 1 - 0.15 = 0.85
    close(explained_variance(torch.tensor([[1.0, 2.0, 3.0, 3.0, -9.0]]), returns, mask), 0.85)
    close(explained_variance(returns, returns, mask), 1.0)
    close(explained_variance(torch.full((1, 5), 2.5), returns, mask), 0.0)
    assert math.isnan(explained_variance(returns, torch.ones(1, 5), mask).item())


# ---------------------------------------------------------------------------------------------- KL control


def test_adaptive_kl_controller_sequence():
    ctl = AdaptiveKLController(init_coef=0.2, target=6.0, horizon=10000)
    ctl.update(12.0, n_steps=256)  # error 12/6 - 1 = 1 -> clipped 0.2; x (1 + 0.2*256/10000) = 1.00512
    assert ctl.value == pytest.approx(0.201024)
    ctl.update(torch.tensor(3.0), n_steps=256)  # error -0.5 -> -0.2; x 0.99488
    assert ctl.value == pytest.approx(0.19999475712)
    ctl.update(6.6, n_steps=1000)  # error 0.1 (unclipped); x 1.01
    assert ctl.value == pytest.approx(0.2019947046912)
    ctl.update(6.0, n_steps=1000)  # on target: unchanged
    assert ctl.value == pytest.approx(0.2019947046912)


def test_fixed_kl_controller_and_validation():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 64)
    assert ctl.value == 0.05
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, target=0.0, horizon=100)


def test_loss_aggregation_modes_against_hand_computed_values():
    from rewardhub.maths.rl import aggregate, loss_token_weights

    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])  # lengths 3 and 1
    loss = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 99.0, 99.0, 99.0]])  # 99: padding, must not count
    expected = {
        "token-mean": (1 + 2 + 3 + 4) / 4,           # every token alike
        "seq-mean-token-mean": ((1 + 2 + 3) / 3 + 4 / 1) / 2,  # per-sequence means, then their mean
        "seq-mean-token-sum": ((1 + 2 + 3) + 4) / 2,
        "seq-mean-token-sum-norm": ((1 + 2 + 3) + 4) / (2 * 4),  # Dr. GRPO: / (sequences x max tokens)
    }
    for mode, value in expected.items():
        w = loss_token_weights(mask, mode, n_tokens=4, n_seqs=2, max_tokens=4)
        assert aggregate(loss, mask, w).item() == pytest.approx(value), mode
        # split into chunks with the whole batch's normalisers: the pieces add up to the same loss
        parts = sum(aggregate(loss[i:i + 1], mask[i:i + 1], w[i:i + 1]) for i in range(2))
        assert parts.item() == pytest.approx(value), mode
    assert aggregate(loss, mask, None).item() == pytest.approx(2.5)  # no weights: token-mean
    with pytest.raises(ValueError, match="seq-mean-token-mean"):
        loss_token_weights(mask, "sequence-mean", 4, 2, 4)


def test_policy_loss_with_sequence_weights_is_the_original_grpo_objective():
    from rewardhub.maths.rl import loss_token_weights

    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, -0.5])
    logp = torch.log(torch.tensor([[0.5, 0.4, 0.9], [0.2, 0.3, 0.6]]))
    w = loss_token_weights(mask, "seq-mean-token-mean", 5, 2, 3)
    loss, stats = ppo_policy_loss(logp, logp.clone(), adv, mask, token_weights=w)
    # on-policy ratio 1: per token -A; GRPO: mean over sequences of each sequence's token-mean
    assert loss.item() == pytest.approx(((-1.0 * 2 / 2) + (0.5 * 3 / 3)) / 2)
    assert stats["loss_token_mean"].item() == pytest.approx((-1.0 * 2 + 0.5 * 3) / 5)
