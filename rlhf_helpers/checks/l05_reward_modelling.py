"""Lesson 05's exercises: the Bradley-Terry probability, the pairwise loss, and where to read the reward."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from rlhf_helpers.exercises import Case, check


def reference_preference_probability(reward_a: torch.Tensor, reward_b: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry: ``P(a ≻ b) = exp(r_a) / (exp(r_a) + exp(r_b)) = sigmoid(r_a - r_b)``."""
    return torch.sigmoid(reward_a - reward_b)


def reference_pairwise_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """The negative log-likelihood of the labels under Bradley-Terry, averaged over the pairs:
    ``-mean(log sigmoid(r_chosen - r_rejected))``. ``logsigmoid`` never takes the log of 0."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def reference_last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """For a right-padded batch (each row: ones, then zeros), the index of each row's last 1."""
    return attention_mask.sum(dim=1) - 1


def _rewards(seed: int, *shape: int, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def check_preference_probability(preference_probability):
    """Exercise 05.1: the Bradley-Terry probability that ``a`` is preferred."""
    cases = [
        Case((_rewards(0, 5), _rewards(1, 5)), about="five pairs"),
        Case((torch.tensor([0.7, -1.2]), torch.tensor([0.7, -1.2])), about="equal rewards: a coin toss"),
        Case((torch.tensor([1.0, -3.0]) + 2.0, torch.tensor([0.0, -4.0]) + 2.0),
             about="adding the same constant to both rewards"),
        Case((torch.tensor([1000.0, -1000.0, 5.0]), torch.tensor([999.0, -1002.0, 1005.0])),
             about="huge rewards: exp overflows"),
        Case((_rewards(2, 2, 3), _rewards(3, 2, 3)), about="a 2-D batch"),
    ]
    return check("Exercise 05.1 (preference_probability)", preference_probability,
                 reference_preference_probability, cases,
                 hint=("Under Bradley-Terry, the probability that a beats b is exp(r_a) divided by "
                       "exp(r_a) + exp(r_b). Right on paper, but exp() overflows for large rewards: rewrite "
                       "it so that only the difference r_a - r_b appears.",
                       "Divide top and bottom by exp(r_a): 1 / (1 + exp(-(r_a - r_b))), the logistic "
                       "sigmoid of the difference.",
                       "return torch.sigmoid(reward_a - reward_b)"))


def check_pairwise_loss(pairwise_loss):
    """Exercise 05.2: the reward model's loss on a batch of labelled pairs."""
    cases = [
        Case((_rewards(4, 8), _rewards(5, 8)), about="eight pairs"),
        Case((torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-1.0, 0.5, 1.0])),
             about="right, undecided and wrong"),
        Case((torch.tensor([0.3]), torch.tensor([1.3])), about="one pair, ranked the wrong way"),
        Case((torch.tensor([40.0, -30.0, 0.0]), torch.tensor([-40.0, 70.0, 0.0])),
             about="confident pairs, one very wrong: sigmoid(-100) is 0 in float32"),
    ]
    return check("Exercise 05.2 (pairwise_loss)", pairwise_loss, reference_pairwise_loss, cases,
                 hint=("The loss is the negative log-likelihood of the labels under Bradley-Terry: for "
                       "each pair, minus the log of the probability that the chosen answer beats the "
                       "rejected one (05.1), averaged over the pairs into one number. Mind the order "
                       "(chosen against rejected), and a very wrong pair: its probability rounds to 0, "
                       "whose log is -inf.",
                       "Per pair: -log sigmoid(r_chosen - r_rejected). torch.nn.functional.logsigmoid "
                       "computes log(sigmoid(x)) without rounding to 0 first. Take minus its mean over the "
                       "pairs: a scalar tensor, not the sum.",
                       "return -torch.nn.functional.logsigmoid(chosen_rewards - rejected_rewards).mean()"))


def _right_padded(lengths: list[int], width: int | None = None) -> torch.Tensor:
    width = width or max(lengths)
    return torch.tensor([[1] * n + [0] * (width - n) for n in lengths])


def check_last_token_index(last_token_index):
    """Exercise 05.3: where a right-padded row's last real token is."""
    cases = [
        Case((_right_padded([5, 3, 1]),), about="three rows, padded to 5"),
        Case((_right_padded([4, 4]),), about="no padding at all"),
        Case((_right_padded([2, 7, 7, 3], width=9),), about="every row padded"),
        Case((_right_padded([1]),), about="one token"),
    ]
    return check("Exercise 05.3 (last_token_index)", last_token_index, reference_last_token_index, cases,
                 hint=("In a right-padded row the real tokens come first and the padding after them; "
                       "the mask has a 1 for each real token. Searching for the first 0 fails on a "
                       "row without padding.",
                       "The last real token's position is (number of real tokens) - 1, one index per row.",
                       "return attention_mask.sum(dim=1) - 1"))
