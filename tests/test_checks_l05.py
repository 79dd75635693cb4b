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


# Exercise 05.4: one step of the reward model.

def test_the_reference_step_is_sgd_on_pairwise_gradients_computed_by_hand():
    """Independent of reward_step: each row's reward read from the transformer's last real token by
    hand, the loss as softplus, gradients by torch.autograd.grad, the clip by clip_grad_norm_'s rule,
    and SGD's update by its formula."""
    from rlhf_helpers import reward

    model, _, batch, _ = l05._reward_state(8, "sgd", [5, 3, 7], [2, 6, 4])
    lr, clip = 0.5, 0.05
    hidden = model.transformer(input_ids=batch["input_ids"]).last_hidden_state
    last = batch["attention_mask"].sum(1) - 1
    rewards = model.score(hidden[torch.arange(len(last)), last])[:, 0]
    loss = F.softplus(rewards[3:] - rewards[:3]).mean()  # rows 0-2 chosen, 3-5 rejected
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params)
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    scale = min(1.0, clip / (norm.item() + 1e-6))
    assert scale < 1.0, "the clip must bind"
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.ones_like(p)  # stale gradients: the step must clear them, not add to them
    optimizer = torch.optim.SGD(params, lr=lr)
    got = reward.reward_step(model, optimizer, batch, l05.reference_pairwise_loss, max_grad_norm=clip)
    assert torch.allclose(got, loss.detach(), atol=1e-12) and not got.requires_grad
    for p, w, g in zip(params, before, grads):
        assert torch.allclose(p.detach(), w - lr * scale * g, atol=1e-12)


def _right_reward_step(model, optimizer, batch, loss_fn, max_grad_norm=1.0):
    rewards = model(**batch).logits.squeeze(-1)
    n = len(rewards) // 2
    loss = loss_fn(rewards[:n], rewards[n:])
    optimizer.zero_grad()
    loss.backward()
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def _reward_step_reading(split):
    """A step that is right except for how it splits the rewards into chosen and rejected."""
    def step(model, optimizer, batch, loss_fn, max_grad_norm=1.0):
        rewards = model(**batch).logits[:, 0]
        loss = loss_fn(*split(rewards))
        optimizer.zero_grad()
        loss.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        return loss.detach()
    return step


def _reward_step_without_zeroing(model, optimizer, batch, loss_fn, max_grad_norm=1.0):
    loss = loss_fn(*model(**batch).logits[:, 0].chunk(2))
    loss.backward()  # adds to the stale gradients
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def _reward_step_clipping_after_the_step(model, optimizer, batch, loss_fn, max_grad_norm=1.0):
    loss = loss_fn(*model(**batch).logits[:, 0].chunk(2))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)  # too late: the step is taken
    return loss.detach()


def test_a_right_reward_step_is_returned_and_a_stub_falls_back(capsys):
    from rlhf_helpers import reward

    def stub(model, optimizer, batch, loss_fn, max_grad_norm=1.0):
        raise NotImplementedError

    assert l05.check_reward_step(_right_reward_step) is _right_reward_step
    assert "✓ Exercise 05.4" in capsys.readouterr().out
    assert l05.check_reward_step(stub) is reward.reward_step
    assert "not attempted" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, fragment", [
    (_reward_step_reading(lambda r: (r[0::2], r[1::2])), "output: values differ"),  # pairs as alternate rows
    (_reward_step_reading(lambda r: r.chunk(2)[::-1]), "output: values differ"),  # rejected against chosen
    (_reward_step_without_zeroing, "argument 1's weights['transformer.wte.weight']: values differ"),
    (_reward_step_clipping_after_the_step, "values differ, first at index"),
])
def test_reward_step_mistakes_are_caught_readably(wrong, fragment):
    with pytest.raises(ExerciseError) as caught:
        l05.check_reward_step(wrong)
    message = str(caught.value)
    assert "Exercise 05.4" in message and fragment in message and "hint: trl's collator puts" in message
    assert "GPT2ForSequenceClassification (2,088 parameters)" in message and "reference_pairwise_loss" in message
    assert all(len(line) < 400 for line in message.splitlines()), "models, optimisers and batches named, not dumped"
