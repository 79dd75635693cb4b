"""Lesson 02's checks accept right answers and reject the classic mistakes."""

import math

import pytest
import torch
from torch.nn import functional as F

from rlhf_helpers.checks import l02_gpt_from_scratch as l02
from rlhf_helpers.exercises import ExerciseError
from rlhf_helpers.gpt import GPT, GPTConfig


def test_references_agree_with_torch_and_the_model():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    fused = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(l02.reference_attention(q, k, v), fused, atol=1e-6)
    x = torch.randn(2, 4, 3, generator=g)
    looped = torch.stack([x[:, : t + 1].mean(1) for t in range(4)], dim=1)
    assert torch.allclose(l02.reference_causal_average(x), looped, atol=1e-6)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)).eval()
    stream = torch.randn(1, 6, 8, generator=g)
    block = model.transformer.h[0]
    assert torch.allclose(l02.reference_block_forward(block, stream), block(stream), atol=1e-6)
    attn = block.attn
    qkv = attn.c_attn(stream).split(8, dim=2)
    mha = l02.reference_multi_head_attention(*qkv, n_head=2)
    assert torch.allclose(attn.c_proj(mha), attn(stream), atol=1e-6)


def test_correct_answers_pass(capsys):
    assert l02.check_attention(l02.reference_attention) is l02.reference_attention
    assert l02.check_top_k_filter(l02.reference_top_k_filter) is l02.reference_top_k_filter
    assert capsys.readouterr().out.count("✓") == 2


def unmasked(q, k, v):
    return F.softmax(q @ k.transpose(-2, -1) / math.sqrt(k.size(-1)), dim=-1) @ v


def unscaled(q, k, v):
    T = q.size(-2)
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    return F.softmax((q @ k.transpose(-2, -1)).masked_fill(~mask, float("-inf")), dim=-1) @ v


def post_layernorm(block, x):
    x = block.ln_1(x + block.attn(x))
    return block.ln_2(x + block.mlp(x))


def heads_split_wrongly(q, k, v, n_head):
    B, T, C = q.shape
    split = lambda t: t.view(B, n_head, T, C // n_head)  # reshapes without transposing
    return l02.reference_attention(split(q), split(k), split(v)).reshape(B, T, C)


@pytest.mark.parametrize("checker, wrong, name", [
    (l02.check_attention, unmasked, "02.2"),
    (l02.check_attention, unscaled, "02.2"),
    (l02.check_block_forward, post_layernorm, "02.4"),
    (l02.check_multi_head_attention, heads_split_wrongly, "02.3"),
    (l02.check_causal_average, lambda x: x.cumsum(1), "02.1"),
    (l02.check_top_k_filter, lambda logits, k: logits, "02.5"),
])
def test_classic_mistakes_are_caught(checker, wrong, name):
    with pytest.raises(ExerciseError, match=f"Exercise {name}"):
        checker(wrong)


# Exercise 02.6: one training step.

def _tiny_gpt(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=12, block_size=6, n_layer=2, n_head=2, n_embd=8)).to(dtype)


def test_the_reference_step_is_adamw_on_fresh_clipped_gradients_by_hand():
    from rlhf_helpers.gpt import configure_optimizers, train_step
    model, lr, clip, eps = _tiny_gpt(), 1e-2, 0.05, 1e-8
    x = torch.randint(12, (3, 6), generator=torch.Generator().manual_seed(1))
    y = torch.randint(12, (3, 6), generator=torch.Generator().manual_seed(2))
    names = [n for n, _ in model.named_parameters()]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = torch.autograd.grad(model(x, y)[1], list(model.parameters()))
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    scale = min(1.0, clip / (norm.item() + 1e-6))  # clip_grad_norm_'s rule
    for p in model.parameters():
        p.grad = torch.ones_like(p)  # stale gradients the step must clear, not add to
    [adamw] = configure_optimizers(model, lr)
    decays = {id(p): group["weight_decay"] for group in adamw.param_groups for p in group["params"]}
    loss = train_step(model, [adamw], x, y, grad_clip=clip)
    assert scale < 1.0, "the case must make the clip bind"
    for name, p, g in zip(names, model.parameters(), grads):
        g = g * scale
        # AdamW's first step: bias-corrected moments are g and g**2, so the step is lr * g / (|g| + eps)
        expected = before[name] * (1 - lr * decays[id(p)]) - lr * g / (g.abs() + eps)
        assert torch.allclose(p.detach(), expected, atol=1e-10), name
    assert loss.requires_grad is False


def _step_without_zeroing(model, optimizers, x, y, grad_clip=1.0):
    _, loss = model(x, y)
    loss.backward()  # adds to the stale gradients
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for optimizer in optimizers:
        optimizer.step()
    return loss.detach()


def _step_clipping_too_late(model, optimizers, x, y, grad_clip=1.0):
    _, loss = model(x, y)
    for optimizer in optimizers:
        optimizer.zero_grad()
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)  # after the update: no effect
    return loss.detach()


def _step_of_the_first_optimiser_only(model, optimizers, x, y, grad_clip=1.0):
    return l02.reference_train_step(model, optimizers[:1], x, y, grad_clip)  # Muon's matrices only


def _step_returning_a_float(model, optimizers, x, y, grad_clip=1.0):
    return l02.reference_train_step(model, optimizers, x, y, grad_clip).item()


@pytest.mark.parametrize("wrong, fragment", [
    (_step_without_zeroing, "weights['transformer.wte.weight']: values differ"),
    (_step_clipping_too_late, "values differ, first at index"),
    (_step_of_the_first_optimiser_only, "values differ"),
    (_step_returning_a_float, "expected a torch.Tensor, got float"),
])
def test_train_step_mistakes_are_caught_readably(wrong, fragment):
    with pytest.raises(ExerciseError) as caught:
        l02.check_train_step(wrong)
    message = str(caught.value)
    assert fragment in message and "stale gradients" in message
    assert "[Muon (1,536 parameters), AdamW (368 parameters)]" in message, "optimisers named, not dumped"
    assert all(len(line) < 400 for line in message.splitlines())


def test_a_right_train_step_is_returned_and_a_stub_falls_back(capsys):
    def mine(model, optimizers, x, y, grad_clip=1.0):
        _, loss = model(x, y)
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        for optimizer in optimizers:
            optimizer.step()
        return loss.detach()

    def stub(model, optimizers, x, y, grad_clip=1.0):
        raise NotImplementedError

    assert l02.check_train_step(mine) is mine
    assert l02.check_train_step(stub) is l02.reference_train_step


def test_checking_leaves_the_learners_random_state_alone(capsys):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    l02.check_block_forward(l02.reference_block_forward)
    l02.check_train_step(l02.reference_train_step)
    assert torch.equal(torch.rand(3), expected), "a check reseeded the global generator"
