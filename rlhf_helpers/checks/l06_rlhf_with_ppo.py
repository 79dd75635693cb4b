"""Lesson 06's exercises: the four pieces of maths inside a PPO step for language models.

1. ``per_token_rewards``: ``-beta * (logprob - ref_logprob)`` at every real token, plus the
   reward model's score at the last real token of each response;
2. ``gae``: generalised advantage estimation, backwards over the response, ending at its last
   real token;
3. ``masked_whiten``: mean 0 and variance 1 over the real tokens only;
4. ``clipped_policy_loss``: PPO's clipped surrogate over the real tokens.

The references are ``rlhf_helpers.ppo``'s own functions, the ones the training loop runs. Every
case is a small batch of random tensors whose rows end at different lengths, with values that
are *not* zero under the padding (as real tensors are before they are masked), so an answer that
reads the padding gives a different number.
"""

from __future__ import annotations

import torch

from rlhf_helpers import ppo
from rlhf_helpers.exercises import Case, check

GARBAGE = 7.0  # what sits under the padding in the test tensors: large enough to change any mean


def reference_per_token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                                mask: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rewards, kl)``, both ``(B, R)`` and 0 on padding: ``kl = logprob - ref_logprob``,
    ``rewards = -beta * kl``, and each row's score added at its last real token."""
    return ppo.per_token_rewards(scores, logprobs, ref_logprobs, mask, beta)


def reference_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                  lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """``(advantages, returns)``: ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam
    A_{t+1}`` from the last token back, nothing after a row's last real token, ``returns = A + V``."""
    return ppo.gae(rewards, values, mask, gamma, lam)


def reference_masked_whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / sqrt(var + 1e-8)`` with the mean and the unbiased variance of the real values;
    0 on padding."""
    return ppo.masked_whiten(x, mask)


def reference_clipped_policy_loss(new_logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                                  advantages: torch.Tensor, mask: torch.Tensor,
                                  clip_eps: float = 0.2) -> torch.Tensor:
    """The mean over real tokens of ``max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))``."""
    return ppo.policy_loss(new_logprobs, old_logprobs, advantages, mask, clip_eps)[0]


# --------------------------------------------------------------------------------------------
# Random test tensors
# --------------------------------------------------------------------------------------------


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def prefix_mask(lengths: list[int], width: int) -> torch.Tensor:
    """A ``(B, width)`` long mask with ``lengths[i]`` ones, then zeros: a response then padding."""
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()


def _pad_with_garbage(x: torch.Tensor, mask: torch.Tensor, garbage: float = GARBAGE) -> torch.Tensor:
    return torch.where(mask.bool(), x, torch.full_like(x, garbage))


def reward_case(seed: int, lengths: list[int], width: int, beta: float, about: str) -> Case:
    """Scores, log-probabilities of the policy and of the reference, a mask, and beta."""
    g = _generator(seed)
    mask = prefix_mask(lengths, width)
    scores = torch.randn(len(lengths), generator=g)
    logprobs = -torch.rand(len(lengths), width, generator=g) * 3
    ref_logprobs = logprobs - 0.3 + 0.5 * torch.randn(len(lengths), width, generator=g)  # near, not equal
    return Case((scores, _pad_with_garbage(logprobs, mask), _pad_with_garbage(ref_logprobs, mask, -GARBAGE), mask, beta),
                about=about)


def gae_case(seed: int, lengths: list[int], width: int, gamma: float, lam: float, about: str) -> Case:
    """Rewards, values and a mask; garbage under the padding, where a value must not be read."""
    g = _generator(seed)
    mask = prefix_mask(lengths, width)
    rewards = 0.1 * torch.randn(len(lengths), width, generator=g)
    rewards[torch.arange(len(lengths)), torch.tensor(lengths) - 1] += torch.randn(len(lengths), generator=g)
    values = torch.randn(len(lengths), width, generator=g)
    return Case((_pad_with_garbage(rewards, mask), _pad_with_garbage(values, mask), mask),
                {"gamma": gamma, "lam": lam}, about=about)


def whiten_case(seed: int, lengths: list[int], width: int, loc: float, scale: float, about: str) -> Case:
    g = _generator(seed)
    mask = prefix_mask(lengths, width)
    x = loc + scale * torch.randn(len(lengths), width, generator=g)
    return Case((_pad_with_garbage(x, mask), mask), about=about)


def policy_case(seed: int, lengths: list[int], width: int, spread: float, clip_eps: float, about: str) -> Case:
    """Old and new log-probabilities whose ratios land inside and outside the clip range, both ways."""
    g = _generator(seed)
    mask = prefix_mask(lengths, width)
    old = -torch.rand(len(lengths), width, generator=g) * 3
    new = old + spread * torch.randn(len(lengths), width, generator=g)
    advantages = torch.randn(len(lengths), width, generator=g)
    return Case((_pad_with_garbage(new, mask), _pad_with_garbage(old, mask), _pad_with_garbage(advantages, mask),
                 mask), {"clip_eps": clip_eps}, about=about)


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------


def check_per_token_rewards(per_token_rewards):
    """Exercise 06.1: the KL-penalised reward of every response token."""
    cases = [
        reward_case(0, [5, 3, 1], 5, 0.1, about="3 responses of 5, 3 and 1 tokens, beta=0.1"),
        reward_case(1, [4, 4], 4, 0.05, about="no padding, beta=0.05"),
        reward_case(2, [2, 6, 4, 1], 6, 0.5, about="4 responses, beta=0.5"),
        reward_case(3, [3, 2], 7, 0.0, about="beta=0: the score alone, at the last real token"),
    ]
    return check("Exercise 06.1 (per_token_rewards)", per_token_rewards, reference_per_token_rewards, cases,
                 hint=("Every real token pays for drifting from the reference model: minus beta times "
                       "the log-ratio of the policy's and the reference's probability of the sampled token "
                       "(positive when the policy likes it more). The reward model's score is added once, "
                       "at the LAST REAL token of each response, which for a short response comes before "
                       "the last column. Both outputs are 0 on padding, whatever sits under it.",
                       "kl: (logprobs - ref_logprobs) times the mask; rewards: -beta * kl. Row i's last "
                       "real token is at index mask[i].sum() - 1: add scores[i] there (index the rows with "
                       "torch.arange(B) and the columns with those indices). Return (rewards, kl).",
                       "mask = mask.to(logprobs.dtype)\n"
                       "  kl = (logprobs - ref_logprobs) * mask\n"
                       "  rewards = -beta * kl\n"
                       "  last = mask.sum(dim=1).long() - 1\n"
                       "  rewards[torch.arange(rewards.size(0)), last] += scores\n"
                       "  return rewards, kl"))


def check_gae(gae):
    """Exercise 06.2: generalised advantage estimation over a padded batch."""
    cases = [
        gae_case(0, [5, 3, 1], 5, 1.0, 0.95, about="gamma=1, lam=0.95, 3 rows of different lengths"),
        gae_case(1, [4, 4], 4, 1.0, 1.0, about="lam=1: the Monte-Carlo return minus the value"),
        gae_case(2, [6, 2, 4], 6, 0.9, 0.5, about="gamma=0.9, lam=0.5"),
        gae_case(3, [3, 1], 5, 0.99, 0.0, about="lam=0: one-step TD errors"),
    ]
    return check("Exercise 06.2 (gae)", gae, reference_gae, cases,
                 hint=("A token's advantage is how much better things went than the value model "
                       "expected: this step's surprise (its reward plus the next value, minus its own "
                       "value), plus the later surprises discounted by gamma times lam. So compute it "
                       "backwards, from the end. Nothing may come from past a row's last real token: the "
                       "padding holds garbage that must never be read or bootstrapped from.",
                       "Zero rewards and values under the padding (multiply by the mask). For t from the "
                       "last column down to 0: delta_t = r_t + gamma * V_{t+1} - V_t (V after the last "
                       "column is 0), A_t = delta_t + gamma * lam * A_{t+1}. Mask the advantages; the "
                       "returns are advantages + values.",
                       "mask = mask.to(values.dtype)\n"
                       "  rewards, values = rewards * mask, values * mask\n"
                       "  advantages = torch.zeros_like(rewards)\n"
                       "  running = torch.zeros_like(rewards[:, 0])\n"
                       "  T = rewards.size(1)\n"
                       "  for t in reversed(range(T)):\n"
                       "      next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)\n"
                       "      delta = rewards[:, t] + gamma * next_value - values[:, t]\n"
                       "      running = delta + gamma * lam * running\n"
                       "      advantages[:, t] = running\n"
                       "  advantages = advantages * mask\n"
                       "  return advantages, advantages + values"))


def check_masked_whiten(masked_whiten):
    """Exercise 06.3: whiten the advantages over the real tokens only."""
    cases = [
        whiten_case(0, [5, 3, 1], 5, 2.0, 3.0, about="3 rows, mean 2, spread 3"),
        whiten_case(1, [4, 4], 4, 0.0, 1.0, about="no padding"),
        whiten_case(2, [6, 1, 2, 6], 6, -1.0, 0.1, about="mostly padding in two rows, small spread"),
        whiten_case(3, [2, 1], 3, 5.0, 10.0, about="three real values only"),
    ]
    return check("Exercise 06.3 (masked_whiten)", masked_whiten, reference_masked_whiten, cases,
                 hint=("Whitening rescales the values to mean 0 and variance 1, so the step size does not "
                       "depend on the reward's scale. Both statistics come from the real tokens only (the "
                       "padding holds garbage that would drag them); the variance is the unbiased one "
                       "(divided by n - 1), a tiny 1e-8 is added before the square root, and the padding "
                       "comes out 0.",
                       "With n = sum(mask): mean = sum(x * mask) / n; var = sum(((x - mean) * mask) ** 2) / "
                       "(n - 1); the result is (x - mean) / sqrt(var + 1e-8) where mask is 1, and 0 where it "
                       "is 0 (torch.where).",
                       "mask = mask.bool()\n"
                       "  n = mask.sum()\n"
                       "  mean = torch.where(mask, x, 0.0).sum() / n\n"
                       "  var = torch.where(mask, (x - mean) ** 2, 0.0).sum() / (n - 1)\n"
                       "  return torch.where(mask, (x - mean) / torch.sqrt(var + 1e-8), 0.0)"))


def check_clipped_policy_loss(clipped_policy_loss):
    """Exercise 06.4: PPO's clipped surrogate loss."""
    cases = [
        policy_case(0, [5, 3, 1], 5, 0.3, 0.2, about="ratios inside and outside [0.8, 1.2], 3 rows"),
        policy_case(1, [4, 4], 4, 0.05, 0.2, about="ratios near 1: little clipping"),
        policy_case(2, [6, 2, 4], 6, 0.6, 0.1, about="far ratios, clip_eps=0.1"),
        policy_case(3, [3, 1], 5, 0.4, 0.3, about="clip_eps=0.3, mostly padding"),
    ]
    return check("Exercise 06.4 (clipped_policy_loss)", clipped_policy_loss, reference_clipped_policy_loss, cases,
                 hint=("PPO's ratio compares probabilities, new over old; the clipped objective takes, "
                       "per token, the more pessimistic of the plain and the clipped term; padding "
                       "tokens must not count in the mean. The check tries ratios far from 1.",
                       "ratio = exp(new_logprobs - old_logprobs); as a loss (to minimise): "
                       "max(-A * ratio, -A * clamp(ratio, 1 - clip_eps, 1 + clip_eps)), then the mean over the "
                       "real tokens: sum(loss * mask) / sum(mask).",
                       "ratio = (new_logprobs - old_logprobs).exp()\n"
                       "  loss = torch.max(-advantages * ratio, "
                       "-advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps))\n"
                       "  return (loss * mask).sum() / mask.sum()"))
