"""Lesson 05's checks accept right answers, fall back when not attempted, and reject the classic mistakes."""

import pytest
import torch
from torch.nn import functional as F

from rlhf_helpers.checks import l05_reward_modelling as l05
from rlhf_helpers.exercises import ExerciseError

CHECKS = [
    (l05.check_preference_probability, l05.reference_preference_probability),
    (l05.check_pairwise_loss, l05.reference_pairwise_loss),
    (l05.check_last_token_index, l05.reference_last_token_index),
]


@pytest.mark.parametrize("checker, reference", CHECKS)
def test_references_pass(checker, reference, capsys):
    assert checker(reference) is reference
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("checker, reference", CHECKS)
def test_not_attempted_falls_back_to_the_reference(checker, reference, capsys):
    def stub(*args):
        raise NotImplementedError

    assert checker(stub) is reference
    assert "not attempted" in capsys.readouterr().out


def test_the_loss_matches_trl_and_the_probability_is_bradley_terry():
    chosen, rejected = torch.randn(6), torch.randn(6)
    # trl's RewardTrainer.compute_loss without margin or centring
    assert torch.allclose(l05.reference_pairwise_loss(chosen, rejected),
                          -F.logsigmoid(chosen - rejected).mean())
    p = l05.reference_preference_probability(chosen, rejected)
    assert torch.allclose(p, chosen.exp() / (chosen.exp() + rejected.exp()))
    assert torch.allclose(l05.reference_pairwise_loss(chosen, rejected), -p.log().mean())


@pytest.mark.parametrize("checker, answer", [
    (l05.check_preference_probability, lambda a, b: 1 / (1 + torch.exp(b - a))),
    (l05.check_preference_probability, lambda a, b: torch.softmax(torch.stack([a, b]), dim=0)[0]),
    (l05.check_pairwise_loss, lambda c, r: F.softplus(r - c).mean()),
    (l05.check_pairwise_loss, lambda c, r: F.binary_cross_entropy_with_logits(c - r, torch.ones_like(c))),
    (l05.check_last_token_index, lambda m: m.cumsum(1).argmax(1)),
])
def test_other_right_answers_pass(checker, answer):
    assert checker(answer) is answer


@pytest.mark.parametrize("checker, wrong, expected", [
    (l05.check_preference_probability, lambda a, b: torch.exp(a) / (torch.exp(a) + torch.exp(b)), "huge"),
    (l05.check_preference_probability, lambda a, b: torch.sigmoid(b - a), "wrong answer"),
    (l05.check_preference_probability, lambda a, b: torch.sigmoid(a) - torch.sigmoid(b), "wrong answer"),
    (l05.check_pairwise_loss, lambda c, r: -F.logsigmoid(r - c).mean(), "wrong answer"),  # wrong sign
    (l05.check_pairwise_loss, lambda c, r: -torch.sigmoid(c - r).mean(), "wrong answer"),  # no log
    (l05.check_pairwise_loss, lambda c, r: -F.logsigmoid(c - r).sum(), "wrong answer"),  # sum, not mean
    (l05.check_pairwise_loss, lambda c, r: -(F.logsigmoid(c) + F.logsigmoid(-r)).mean(), "wrong answer"),
    (l05.check_pairwise_loss, lambda c, r: -torch.log(torch.sigmoid(c - r)).mean(), "very wrong"),
    (l05.check_pairwise_loss, lambda c, r: -F.logsigmoid(c - r), "shape"),  # no reduction
    (l05.check_last_token_index, lambda m: m.argmin(1) - 1, "wrong answer"),
    (l05.check_last_token_index, lambda m: m.sum(1), "wrong answer"),
])
def test_classic_mistakes_are_named(checker, wrong, expected):
    with pytest.raises(ExerciseError) as err:
        checker(wrong)
    message = str(err.value)
    assert expected in message and "input tried" in message and "hint" in message
