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
                 hint=("DPO needs no reward model: an answer's implicit reward is beta times how much "
                       "likelier the policy makes it than the reference does (a difference of "
                       "log-probabilities). The loss is lesson 05's pairwise loss on those rewards, chosen "
                       "against rejected, averaged over the pairs. Usual slips: leaving out the reference, "
                       "beta outside the log-sigmoid, a sum instead of a mean.",
                       "margin = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected), from the summed "
                       "log-probabilities; the loss is minus the mean over pairs of log sigmoid(beta * "
                       "margin). Use torch.nn.functional.logsigmoid: log of sigmoid underflows for large margins.",
                       "margin = ((policy_chosen_logps - ref_chosen_logps)\n"
                       "            - (policy_rejected_logps - ref_rejected_logps))\n"
                       "  return -torch.nn.functional.logsigmoid(beta * margin).mean()"))


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
                 hint=("GRPO judges each answer against the other answers to the SAME prompt: subtract "
                       "its group's mean reward and divide by its group's standard deviation plus eps (eps "
                       "keeps a group of equal rewards at 0, not NaN). The rewards come flat, a prompt's "
                       "group_size answers next to each other; normalising over the whole batch is wrong.",
                       "View the rewards as (n_prompts, group_size); per row, the mean and the unbiased std "
                       "(torch.std's default), keeping the dimension; (grouped - mean) / (std + eps); "
                       "flatten back. (Shao et al.'s convention, trl's scale_rewards='group'; Dr. GRPO's "
                       "centring without the division is a published variant, not the one this lesson trains.)",
                       "grouped = rewards.view(-1, group_size)\n"
                       "  mean = grouped.mean(dim=1, keepdim=True)\n"
                       "  std = grouped.std(dim=1, keepdim=True)\n"
                       "  return ((grouped - mean) / (std + eps)).reshape(-1)"))
