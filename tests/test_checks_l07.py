"""Lesson 07's checks accept right answers, fall back when not attempted, and reject the classic mistakes."""

import pytest
import torch
from torch.nn import functional as F

from rlhf_helpers.checks import l07_beyond_ppo as l07
from rlhf_helpers.exercises import ExerciseError

CHECKS = [(l07.check_dpo_loss, l07.reference_dpo_loss), (l07.check_group_advantages, l07.reference_group_advantages)]


@pytest.mark.parametrize("checker, reference", CHECKS)
def test_references_pass(checker, reference, capsys):
    assert checker(reference) is reference
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("checker, reference", CHECKS)
def test_not_attempted_falls_back_to_the_reference(checker, reference, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError

    assert checker(stub) is reference
    assert "not attempted" in capsys.readouterr().out


def test_dpo_loss_is_log_2_at_the_start_and_bradley_terry_on_implicit_rewards():
    pc, pr = torch.randn(5) - 20, torch.randn(5) - 20
    assert torch.isclose(l07.reference_dpo_loss(pc, pr, pc, pr, 0.1), torch.log(torch.tensor(2.0)))
    rc, rr = torch.randn(5) - 20, torch.randn(5) - 20
    implicit_c, implicit_r = 0.3 * (pc - rc), 0.3 * (pr - rr)
    assert torch.isclose(l07.reference_dpo_loss(pc, pr, rc, rr, 0.3), -F.logsigmoid(implicit_c - implicit_r).mean())


def test_group_advantages_match_trl_formula():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0])
    adv = l07.reference_group_advantages(rewards, 4)
    grouped = rewards.view(-1, 4)
    expected = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)
    assert torch.allclose(adv, expected.flatten()) and (adv[4:] == 0).all()


@pytest.mark.parametrize("wrong", [
    lambda pc, pr, rc, rr, beta: -F.logsigmoid((pc - rc) - (pr - rr)).mean(),  # missing beta
    lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((pr - rr) - (pc - rc))).mean(),  # wrong sign
    lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * (pc - pr)).mean(),  # no reference
    lambda pc, pr, rc, rr, beta: -torch.sigmoid(beta * ((pc - rc) - (pr - rr))).mean(),  # sigmoid without log
    lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).sum(),  # sum, not mean
    lambda pc, pr, rc, rr, beta: -beta * F.logsigmoid((pc - rc) - (pr - rr)).mean(),  # beta outside
    lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((pc - rc) - (pr - rr))),  # no reduction
])
def test_dpo_mistakes_are_named(wrong):
    with pytest.raises(ExerciseError) as err:
        l07.check_dpo_loss(wrong)
    message = str(err.value)
    assert "07.1" in message and "input tried" in message and "hint" in message


@pytest.mark.parametrize("wrong", [
    lambda r, g: (r - r.mean()) / (r.std() + 1e-4),  # whole batch, not per group
    lambda r, g: (r.view(-1, g) - r.view(-1, g).mean(1, keepdim=True)).flatten(),  # no scaling
    lambda r, g: ((r.view(-1, g) - r.view(-1, g).mean(1, keepdim=True)) / r.view(-1, g).std(1, keepdim=True)).flatten(),
    lambda r, g: ((r.view(g, -1) - r.view(g, -1).mean(0)) / (r.view(g, -1).std(0) + 1e-4)).flatten(),  # wrong layout
])
def test_grpo_mistakes_are_named(wrong):
    with pytest.raises(ExerciseError) as err:
        l07.check_group_advantages(wrong)
    assert "07.2" in str(err.value)
