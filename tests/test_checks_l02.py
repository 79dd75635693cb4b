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
