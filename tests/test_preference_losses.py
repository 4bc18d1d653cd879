"""Hand-computed and independent-reference checks for rewardhub.maths.preference."""

import math

import pytest
import torch
import torch.nn.functional as F

from rewardhub.maths.preference import bradley_terry_loss, dpo_loss, sequence_logps


def close(actual, expected, atol=1e-5):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=1e-5)


def _pair():
    # pc = -1, pr = -3, rc = -2, rr = -2.5  ->  h = (-1 + 2) - (-3 + 2.5) = 1 - (-0.5) = 1.5
    pc = torch.tensor([-1.0], requires_grad=True)
    pr = torch.tensor([-3.0], requires_grad=True)
    return pc, pr, torch.tensor([-2.0]), torch.tensor([-2.5])


# softplus(-0.75) = log(1 + e^-0.75) = 0.3868710, softplus(0.75) = 1.1368710
SP_NEG, SP_POS = 0.3868710061, 1.1368710061


def test_dpo_sigmoid_hand_value_rewards_and_grad():
    pc, pr, rc, rr = _pair()
    losses, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, beta=0.5)  # beta * h = 0.75
    close(losses.detach(), [SP_NEG])
    close(chosen_r, [0.5])  # 0.5 * (-1 + 2)
    close(rejected_r, [-0.25])  # 0.5 * (-3 + 2.5)
    assert not chosen_r.requires_grad and not rejected_r.requires_grad
    losses.sum().backward()
    # d/dpc of -logsigmoid(beta h) = -beta * sigmoid(-beta h)
    close(pc.grad, [-0.5 * (1 / (1 + math.exp(0.75)))])
    close(pr.grad, [0.5 * (1 / (1 + math.exp(0.75)))])


def test_dpo_sigmoid_matches_independent_logsigmoid():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g) * 3 for _ in range(4))
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.2)
    close(losses, -F.logsigmoid(0.2 * ((pc - rc) - (pr - rr))))


def test_cdpo_and_robust_hand_values():
    pc, pr, rc, rr = _pair()
    cdpo, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1)
    close(cdpo.detach(), [0.9 * SP_NEG + 0.1 * SP_POS])
    robust, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="robust", label_smoothing=0.1)
    close(robust.detach(), [(0.9 * SP_NEG - 0.1 * SP_POS) / 0.8])
    plain, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="robust")
    close(plain.detach(), [SP_NEG])  # robust with no noise is plain DPO


def test_hinge_and_ipo_hand_values():
    pc, pr, rc, rr = _pair()
    hinge, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="hinge")
    close(hinge.detach(), [0.25])  # relu(1 - 0.75)
    hinge, _, _ = dpo_loss(pc, pr, rc, rr, beta=2.0, loss_type="hinge")
    close(hinge.detach(), [0.0])  # relu(1 - 3)
    ipo, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="ipo")
    close(ipo.detach(), [0.25])  # (1.5 - 1/(2*0.5))^2
    ipo, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="ipo")
    close(ipo.detach(), [12.25])  # (1.5 - 5)^2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss_type": "kto"}, "sigmoid, robust, hinge, ipo"),
        ({"beta": 0.0}, "beta"),
        ({"label_smoothing": 0.6}, r"\[0, 0.5\]"),
        ({"loss_type": "robust", "label_smoothing": 0.5}, r"\[0, 0.5\)"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, "not defined"),
    ],
)
def test_dpo_validation(kwargs, match):
    pc, pr, rc, rr = _pair()
    with pytest.raises(ValueError, match=match):
        dpo_loss(pc, pr, rc, rr, **kwargs)


def test_dpo_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        dpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(3), torch.zeros(2))


def test_bradley_terry_hand_values():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # gaps [1, -1]: (log(1 + e^-1) + log(1 + e^1)) / 2 = (0.3132617 + 1.3132617) / 2 = 0.8132617
    loss, stats = bradley_terry_loss(chosen, rejected)
    close(loss, 0.8132617)
    close(stats["accuracy"], 0.5)
    close(stats["margin"], 0.0)
    # margin 0.5 -> logits [0.5, -1.5]: (0.4740770 + 1.7014132) / 2 = 1.0877451
    loss, _ = bradley_terry_loss(chosen, rejected, margin=torch.tensor([0.5, 0.5]))
    close(loss, 1.0877451)
    # centring: + 0.01 * mean([(2+1)^2, (0+1)^2]) = 0.01 * 5 = 0.05
    loss, _ = bradley_terry_loss(chosen[:, None], rejected[:, None], center_coef=0.01)
    close(loss, 0.8632617)


def test_sequence_logps_against_manual_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=g)
    labels = torch.tensor([[1, 4, 0, -100], [3, 3, 2, 1]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    logp = torch.log_softmax(logits, dim=-1)
    expected_sum, expected_mean = [], []
    for b in range(2):
        picked = [logp[b, t, labels[b, t]].item() for t in range(4) if mask[b, t]]
        expected_sum.append(sum(picked))
        expected_mean.append(sum(picked) / len(picked))
    close(sequence_logps(logits, labels, mask), expected_sum)
    close(sequence_logps(logits, labels, mask, average=True), expected_mean)


def test_sequence_logps_hand_value():
    # softmax([0, ln 3]) = [1/4, 3/4]; tokens 1, 1 -> 2 ln(3/4) = -0.5753641; mean -0.2876821
    logits = torch.tensor([[[0.0, math.log(3.0)]] * 3])
    labels = torch.tensor([[1, 1, 0]])
    mask = torch.tensor([[1, 1, 0]])
    close(sequence_logps(logits, labels, mask), [-0.5753641])
    close(sequence_logps(logits, labels, mask, average=True), [-0.2876821])
