"""Lesson 06's exercise checks accept ppo.py's functions and catch the classic mistakes."""

import pytest
import torch

from rlhf_helpers import ppo
from rlhf_helpers.checks import l06_rlhf_with_ppo as l06
from rlhf_helpers.exercises import ExerciseError


def test_references_pass_their_checks(capsys):
    assert l06.check_per_token_rewards(l06.reference_per_token_rewards) is l06.reference_per_token_rewards
    assert l06.check_gae(l06.reference_gae) is l06.reference_gae
    assert l06.check_masked_whiten(l06.reference_masked_whiten) is l06.reference_masked_whiten
    assert l06.check_clipped_policy_loss(l06.reference_clipped_policy_loss) is l06.reference_clipped_policy_loss
    assert capsys.readouterr().out.count("✓") == 4


def test_stubs_fall_back_to_the_reference(capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError

    assert l06.check_gae(stub) is l06.reference_gae
    assert "not attempted" in capsys.readouterr().out


def test_plain_loops_written_as_a_learner_would_pass():
    """Straightforward answers (loops, multiplying by the mask) are accepted, not only ppo.py's code."""

    def rewards(scores, logprobs, ref_logprobs, mask, beta):
        kl = (logprobs - ref_logprobs) * mask
        out = -beta * kl
        for i in range(len(scores)):
            out[i, int(mask[i].sum()) - 1] += scores[i]
        return out, kl

    def gae(rewards, values, mask, gamma=1.0, lam=0.95):
        rewards, values = rewards * mask, values * mask
        advantages = torch.zeros_like(rewards)
        last = torch.zeros(rewards.size(0))
        for t in range(rewards.size(1) - 1, -1, -1):
            next_value = values[:, t + 1] if t + 1 < rewards.size(1) else 0.0
            last = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * last
            advantages[:, t] = last
        advantages = advantages * mask
        return advantages, advantages + values

    def whiten(x, mask):
        n = mask.sum()
        mean = (x * mask).sum() / n
        var = (((x - mean) * mask) ** 2).sum() / (n - 1)
        return (x - mean) / torch.sqrt(var + 1e-8) * mask

    def loss(new, old, advantages, mask, clip_eps=0.2):
        ratio = torch.exp(new - old)
        per_token = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps))
        return (per_token * mask).sum() / mask.sum()

    assert l06.check_per_token_rewards(rewards) is rewards
    assert l06.check_gae(gae) is gae
    assert l06.check_masked_whiten(whiten) is whiten
    assert l06.check_clipped_policy_loss(loss) is loss


# --- classic mistakes -----------------------------------------------------------------------


def _kl_flipped(scores, logprobs, ref_logprobs, mask, beta):
    return ppo.per_token_rewards(scores, ref_logprobs, logprobs, mask, beta)


def _score_at_last_column(scores, logprobs, ref_logprobs, mask, beta):
    kl = (logprobs - ref_logprobs) * mask
    rewards = -beta * kl
    rewards[:, -1] += scores
    return rewards, kl


def _score_at_first_token(scores, logprobs, ref_logprobs, mask, beta):
    kl = (logprobs - ref_logprobs) * mask
    rewards = -beta * kl
    rewards[:, 0] += scores
    return rewards, kl


def _kl_on_padding(scores, logprobs, ref_logprobs, mask, beta):
    kl = logprobs - ref_logprobs
    rewards = -beta * kl
    rewards[torch.arange(len(scores)), mask.sum(1) - 1] += scores
    return rewards, kl


def _beta_forgotten(scores, logprobs, ref_logprobs, mask, beta):
    return ppo.per_token_rewards(scores, logprobs, ref_logprobs, mask, 1.0)


def _gae_forward(rewards, values, mask, gamma=1.0, lam=0.95):
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.size(0))
    T = rewards.size(1)
    for t in range(T):  # forward: each advantage sees the past, not the future
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros(rewards.size(0))
        running = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, advantages + values


def _gae_ignores_mask(rewards, values, mask, gamma=1.0, lam=0.95):
    return ppo.gae(rewards, values, torch.ones_like(mask), gamma, lam)


def _gae_returns_are_advantages(rewards, values, mask, gamma=1.0, lam=0.95):
    advantages, _ = ppo.gae(rewards, values, mask, gamma, lam)
    return advantages, advantages


def _gae_forgets_lambda(rewards, values, mask, gamma=1.0, lam=0.95):
    return ppo.gae(rewards, values, mask, gamma, 1.0)


def _whiten_with_padding(x, mask):
    mean, std = x.mean(), x.std()
    return (x - mean) / std * mask


def _whiten_biased_variance(x, mask):
    n = mask.sum()
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / n
    return (x - mean) / torch.sqrt(var + 1e-8) * mask


def _whiten_padding_left_in(x, mask):
    return ppo.masked_whiten(x, mask) + (1 - mask) * x


def _whiten_no_centring(x, mask):
    return ppo.masked_whiten(x, mask, shift_mean=False)


def _loss_min(new, old, advantages, mask, clip_eps=0.2):
    ratio = torch.exp(new - old)
    per_token = torch.min(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps))
    return ppo.masked_mean(per_token, mask)


def _loss_ratio_not_exponentiated(new, old, advantages, mask, clip_eps=0.2):
    ratio = new - old
    per_token = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps))
    return ppo.masked_mean(per_token, mask)


def _loss_unclipped(new, old, advantages, mask, clip_eps=0.2):
    return ppo.masked_mean(-advantages * torch.exp(new - old), mask)


def _loss_objective_sign(new, old, advantages, mask, clip_eps=0.2):
    ratio = torch.exp(new - old)
    per_token = torch.min(advantages * ratio, advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps))
    return ppo.masked_mean(per_token, mask)  # the objective, not the loss: gradient ascent by descent


def _loss_mean_with_padding(new, old, advantages, mask, clip_eps=0.2):
    ratio = torch.exp(new - old)
    per_token = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps))
    return (per_token * mask).mean()


@pytest.mark.parametrize("check, wrong", [
    (l06.check_per_token_rewards, _kl_flipped),
    (l06.check_per_token_rewards, _score_at_last_column),
    (l06.check_per_token_rewards, _score_at_first_token),
    (l06.check_per_token_rewards, _kl_on_padding),
    (l06.check_per_token_rewards, _beta_forgotten),
    (l06.check_gae, _gae_forward),
    (l06.check_gae, _gae_ignores_mask),
    (l06.check_gae, _gae_returns_are_advantages),
    (l06.check_gae, _gae_forgets_lambda),
    (l06.check_masked_whiten, _whiten_with_padding),
    (l06.check_masked_whiten, _whiten_biased_variance),
    (l06.check_masked_whiten, _whiten_padding_left_in),
    (l06.check_masked_whiten, _whiten_no_centring),
    (l06.check_clipped_policy_loss, _loss_min),
    (l06.check_clipped_policy_loss, _loss_ratio_not_exponentiated),
    (l06.check_clipped_policy_loss, _loss_unclipped),
    (l06.check_clipped_policy_loss, _loss_objective_sign),
    (l06.check_clipped_policy_loss, _loss_mean_with_padding),
])
def test_classic_mistakes_are_caught(check, wrong):
    with pytest.raises(ExerciseError, match="Exercise 06"):
        check(wrong)


def _rollout_like_batch(seed=0):
    """Log-probabilities of a sampled batch, a reference that disagrees by a few nats, whitened
    advantages and a prefix mask: the shape of lesson 06's section-7 comparison."""
    gen = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(16, 12, generator=gen) * 3
    ref_logprobs = logprobs - torch.randn(16, 12, generator=gen) * 0.8
    lengths = torch.randint(3, 13, (16,), generator=gen)
    mask = (torch.arange(12)[None, :] < lengths[:, None]).float()
    advantages = ppo.masked_whiten(torch.randn(16, 12, generator=gen), mask)
    return logprobs, ref_logprobs, advantages, mask


@pytest.mark.parametrize("wrong", [_loss_min, _loss_ratio_not_exponentiated, _loss_unclipped,
                                   _loss_objective_sign, _loss_mean_with_padding])
def test_section_7_compares_the_loss_at_ratios_other_than_one(wrong):
    """At ratio 1 (new = old) with whitened advantages most mistakes agree with the loop, so lesson
    06's real-batch comparison uses the SFT model's log-probabilities as ``new``: there each
    classic mistake differs from ``ppo.policy_loss`` by more than the cell's tolerance. At ratio 1,
    four of the five agreed with it."""
    logprobs, ref_logprobs, advantages, mask = _rollout_like_batch()
    loop_at_one = ppo.policy_loss(logprobs, logprobs, advantages, mask)[0]
    loop, clip_frac, _ = ppo.policy_loss(ref_logprobs, logprobs, advantages, mask)
    assert clip_frac > 0
    assert torch.allclose(l06.reference_clipped_policy_loss(ref_logprobs, logprobs, advantages, mask), loop, atol=1e-4)
    assert not torch.allclose(wrong(ref_logprobs, logprobs, advantages, mask), loop, atol=1e-4)
    blind_at_one = torch.allclose(wrong(logprobs, logprobs, advantages, mask), loop_at_one, atol=1e-4)
    assert blind_at_one == (wrong is not _loss_ratio_not_exponentiated)  # why ratio 1 was no test
