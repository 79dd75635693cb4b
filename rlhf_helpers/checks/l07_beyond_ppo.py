"""Lesson 07's exercises: the DPO loss and GRPO's group-relative advantage."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from rlhf_helpers.exercises import Case, check

GRPO_EPS = 1e-4  # what trl's GRPOTrainer adds to the group's standard deviation


def reference_dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                       ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
                       beta: float) -> torch.Tensor:
    """``-mean(log sigmoid(beta * [(pi_c - ref_c) - (pi_r - ref_r)]))``, from summed log-probabilities."""
    logits = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * logits).mean()


def reference_group_advantages(rewards: torch.Tensor, group_size: int, eps: float = GRPO_EPS) -> torch.Tensor:
    """GRPO's advantage: each reward minus its group's mean, over the group's standard deviation + eps.

    ``rewards`` is flat, ``(n_prompts * group_size,)``, a prompt's G answers next to each other, as
    trl orders them; the standard deviation is the unbiased one (``torch.std``), as trl's.
    """
    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True)
    return ((grouped - mean) / (std + eps)).reshape(-1)


def _logps(seed: int, n: int) -> torch.Tensor:
    """Summed log-probabilities of n answers: negative, tens of nats."""
    return -torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 40 - 5


def check_dpo_loss(dpo_loss):
    """Exercise 07.1: the DPO loss from the policy's and the reference's summed log-probabilities."""
    pc, pr, rc, rr = _logps(0, 6), _logps(1, 6), _logps(2, 6), _logps(3, 6)
    cases = [
        Case((pc, pr, rc, rr), {"beta": 0.1}, about="six pairs, beta 0.1"),
        Case((pc, pr, rc, rr), {"beta": 0.5}, about="the same pairs, beta 0.5"),
        Case((rc, rr, rc, rr), {"beta": 0.1}, about="the policy IS the reference: log 2"),
        Case((pc + 3.0, pr, pc, pr), {"beta": 1.0},
             about="only the chosen answer became likelier than under the reference"),
        Case((torch.tensor([-10.0, -90.0]), torch.tensor([-95.0, -12.0]), torch.tensor([-50.0, -50.0]),
              torch.tensor([-50.0, -50.0])), {"beta": 2.0}, about="large margins, one very wrong"),
        Case((pc[:1], pr[:1], rc[:1], rr[:1]), {"beta": 0.3}, about="one pair"),
    ]
    return check("Exercise 07.1 (dpo_loss)", dpo_loss, reference_dpo_loss, cases,
                 hint="the implicit reward of an answer is beta * (log pi(y) - log ref(y)); the loss is lesson 05's "
                      "Bradley-Terry loss on those rewards: -F.logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), "
                      "then the MEAN over pairs (a scalar). Subtract the reference, multiply by beta inside the "
                      "sigmoid, and use logsigmoid, not log(sigmoid) (it underflows).")


def check_group_advantages(group_advantages):
    """Exercise 07.2: GRPO's group-relative advantage."""
    g = torch.Generator().manual_seed(0)
    cases = [
        Case((torch.randn(8, generator=g), 4), about="two prompts, four answers each"),
        Case((torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]), 3), about="rule rewards (0 or 1), groups of 3"),
        Case((torch.tensor([0.5, 0.5, 0.5, 0.5, 2.0, -1.0, 0.0, 3.0]), 4),
             about="a group whose answers all score the same: advantage 0, not NaN"),
        Case((torch.randn(12, generator=g) * 10 + 100, 6), about="large rewards: only differences matter"),
        Case((torch.randn(5, generator=g), 5), about="one prompt"),
    ]
    return check("Exercise 07.2 (group_advantages)", group_advantages, reference_group_advantages, cases,
                 hint="view the flat rewards as (n_prompts, group_size) (a prompt's answers are next to each other), "
                      "subtract each ROW's mean and divide by that row's std (torch.std, unbiased) plus eps, then "
                      "flatten back. Normalising over the whole batch, or dividing by std without eps, is wrong. "
                      "(This is Shao et al.'s convention, trl's scale_rewards='group'; Dr. GRPO's centring "
                      "without the division is a published variant, but not the one this lesson trains.)")
