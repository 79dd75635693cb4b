"""Lesson 02's exercises: the core pieces of a GPT, checked against the reference model."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.nn import functional as F

from rlhf_helpers.exercises import Case, check, with_stale_gradients
from rlhf_helpers.gpt import GPT, Block, GPTConfig, configure_optimizers, train_step


def reference_causal_average(x: torch.Tensor) -> torch.Tensor:
    """out[:, t] = mean of x[:, :t+1]: each position averages itself and everything before it."""
    counts = torch.arange(1, x.size(1) + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
    return x.cumsum(dim=1) / counts


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal scaled dot-product attention over the last two dimensions ``(..., T, head_size)``."""
    T = q.size(-2)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device))
    return F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1) @ v


def reference_multi_head_attention(q, k, v, n_head: int, attention: Callable = reference_attention):
    """Split ``(B, T, C)`` into ``n_head`` heads, attend in each, put the heads side by side again."""
    B, T, C = q.shape
    split = lambda t: t.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, nh, T, hs)
    y = attention(split(q), split(k), split(v))
    return y.transpose(1, 2).contiguous().view(B, T, C)


def reference_block_forward(block: Block, x: torch.Tensor) -> torch.Tensor:
    """Pre-LayerNorm residual block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""
    x = x + block.attn(block.ln_1(x))
    return x + block.mlp(block.ln_2(x))


def reference_top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep every logit >= the k-th largest in its row; set the rest to -inf."""
    kth = torch.topk(logits, min(k, logits.size(-1)), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def _randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _block(seed: int, n_embd: int = 16, n_head: int = 4) -> Block:
    with torch.random.fork_rng():  # seeded here, the learner's global random state left as it was
        torch.manual_seed(seed)
        block = Block(GPTConfig(vocab_size=10, block_size=8, n_layer=2, n_head=n_head, n_embd=n_embd)).eval()
        with torch.no_grad():  # give the LayerNorms non-trivial parameters, so a missing one shows
            for p in block.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return block


def check_causal_average(attempt: Callable) -> Callable:
    __tracebackhide__ = True
    cases = [Case((torch.tensor([[[1.0], [3.0], [5.0]]]),), about="one sequence, one channel"),
             Case((_randn(2, 5, 3, seed=1),), about="a batch of 2, 5 steps, 3 channels"),
             Case((_randn(1, 1, 4, seed=2),), about="a single time step")]
    return check("Exercise 02.1 (causal averaging with a triangular matrix)", attempt,
                 reference_causal_average, cases,
                 hint=("Output position t is the mean of x over positions 0 to t: itself and the past, "
                       "never the future. The trick is one matrix product along time (dimension 1): a "
                       "lower-triangular weight matrix whose rows each sum to 1, the same for every "
                       "sequence in the batch.",
                       "With T = x.size(1), torch.tril(torch.ones(T, T)) has ones on and below the "
                       "diagonal; divide each row by its sum, so row t holds 1/(t+1) in its first t+1 "
                       "places; then the matrix product with x, which broadcasts (T, T) over the batch.",
                       "T = x.size(1)\n"
                       "  wei = torch.tril(torch.ones(T, T, dtype=x.dtype, device=x.device))\n"
                       "  wei = wei / wei.sum(dim=1, keepdim=True)\n"
                       "  return wei @ x"))


def check_attention(attempt: Callable) -> Callable:
    __tracebackhide__ = True
    cases = [Case((_randn(1, 4, 2, seed=3), _randn(1, 4, 2, seed=4), _randn(1, 4, 2, seed=5)), about="one head"),
             Case((_randn(2, 3, 6, 8, seed=6), _randn(2, 3, 6, 8, seed=7), _randn(2, 3, 6, 8, seed=8)),
                  about="batch 2, 3 heads, T=6, head size 8: the 1/sqrt(8) scaling matters"),
             Case((10 * _randn(1, 5, 4, seed=9), 10 * _randn(1, 5, 4, seed=10), _randn(1, 5, 4, seed=11)),
                  about="large scores: is the future masked before the softmax?")]
    return check("Exercise 02.2 (one head of causal self-attention)", attempt, reference_attention, cases,
                 hint=("Each query scores every key; the scores are scaled down by the square root of "
                       "the head size (or the softmax saturates); the future is masked out BEFORE the "
                       "softmax, so its weight is exactly 0; the output is the weighted average of the "
                       "values. Extra leading dimensions (batch, heads) may come first: work on the last two.",
                       "Scores: q times k transposed on its last two dimensions (k.transpose(-2, -1)), "
                       "divided by sqrt(k.size(-1)). Set the entries above the diagonal to -inf "
                       "(masked_fill with a torch.tril mask of shape (T, T)); softmax over the last "
                       "dimension; multiply by v.",
                       "T = q.size(-2)\n"
                       "  scores = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))\n"
                       "  mask = torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device))\n"
                       "  scores = scores.masked_fill(~mask, float('-inf'))\n"
                       "  return F.softmax(scores, dim=-1) @ v"))


def check_multi_head_attention(attempt: Callable) -> Callable:
    __tracebackhide__ = True
    cases = [Case((_randn(1, 4, 8, seed=12), _randn(1, 4, 8, seed=13), _randn(1, 4, 8, seed=14), 2), about="2 heads"),
             Case((_randn(3, 5, 12, seed=15), _randn(3, 5, 12, seed=16), _randn(3, 5, 12, seed=17), 4),
                  about="batch 3, 4 heads of size 3"),
             Case((_randn(2, 3, 6, seed=18), _randn(2, 3, 6, seed=19), _randn(2, 3, 6, seed=20), 1), about="1 head")]
    return check("Exercise 02.3 (multi-head attention)", attempt, reference_multi_head_attention, cases,
                 hint=("Cut the C channels into n_head groups of adjacent channels, run attention on "
                       "each group on its own, and put the results side by side again. Attention works on "
                       "the last two dimensions, so the heads must come before time while it runs; "
                       "reshaping straight to the target shape mixes time steps into heads.",
                       "Reshape q, k and v from (B, T, C) to (B, T, n_head, C // n_head), then swap "
                       "dimensions 1 and 2 to get (B, n_head, T, head_size); call your attention from 02.2; "
                       "swap back, make it contiguous, and reshape to (B, T, C).",
                       "B, T, C = q.shape\n"
                       "  split = lambda t: t.view(B, T, n_head, C // n_head).transpose(1, 2)\n"
                       "  y = attention(split(q), split(k), split(v))\n"
                       "  return y.transpose(1, 2).contiguous().view(B, T, C)"))


def check_block_forward(attempt: Callable) -> Callable:
    __tracebackhide__ = True
    cases = [Case((_block(21), _randn(2, 6, 16, seed=22)), about="a block with 4 heads"),
             Case((_block(23, n_embd=8, n_head=2), _randn(1, 3, 8, seed=24)), about="a smaller block")]
    return check("Exercise 02.4 (a pre-LayerNorm transformer block)", attempt, reference_block_forward, cases,
                 hint=("Two residual steps, attention first, then the MLP. In each, the LayerNorm "
                       "normalises only the branch's input (it goes *inside* the branch), and the "
                       "branch's output is ADDED to the unnormalised stream; the MLP step reads the "
                       "stream after the attention step was added.",
                       "Step 1: x plus block.attn applied to block.ln_1(x). Step 2: that result plus "
                       "block.mlp applied to block.ln_2 of it.",
                       "x = x + block.attn(block.ln_1(x))\n"
                       "  return x + block.mlp(block.ln_2(x))"))


def check_top_k_filter(attempt: Callable) -> Callable:
    __tracebackhide__ = True
    cases = [Case((torch.tensor([1.0, 5.0, 3.0, 2.0]), 2), about="keep the two largest"),
             Case((_randn(3, 10, seed=25), 3), about="a batch of rows"),
             Case((torch.tensor([[0.5, 0.1, 0.9]]), 1), about="k = 1 is greedy"),
             Case((torch.tensor([2.0, 1.0]), 5), about="k larger than the vocabulary keeps everything")]
    return check("Exercise 02.5 (top-k filtering)", attempt, reference_top_k_filter, cases,
                 hint=("Keep, in each row, the k largest logits and every logit tied with the k-th; "
                       "set the rest to -inf, so softmax gives them probability 0. k may exceed the "
                       "vocabulary.",
                       "torch.topk(...).values gives each row's k largest values, sorted; the last of "
                       "them (kept as a column, [..., -1:]) is the threshold to compare against.",
                       "kth = torch.topk(logits, min(k, logits.size(-1)), dim=-1).values[..., -1:]\n"
                       "  return logits.masked_fill(logits < kth, float('-inf'))"))


def reference_train_step(model, optimizers, x, y, grad_clip: float = 1.0) -> torch.Tensor:
    """The course's one step of training (``gpt.train_step``, which ``gpt.train`` runs)."""
    return train_step(model, optimizers, x, y, grad_clip)


def _training_state(seed: int, muon: bool) -> tuple:
    """A tiny GPT, its optimisers and a batch (a GPT of the lesson's kind, 1,904 parameters)."""
    with torch.random.fork_rng():  # seeded here, the learner's global random state left as it was
        torch.manual_seed(seed)
        model = GPT(GPTConfig(vocab_size=12, block_size=6, n_layer=2, n_head=2, n_embd=8))
    optimizers = configure_optimizers(model, 1e-2, muon_lr=1e-2 if muon else None)
    x = torch.randint(12, (3, 6), generator=torch.Generator().manual_seed(seed + 1))
    y = torch.randint(12, (3, 6), generator=torch.Generator().manual_seed(seed + 2))
    return model, optimizers, x, y


def check_train_step(attempt: Callable) -> Callable:
    __tracebackhide__ = True
    cases = [Case(_training_state(26, muon=True), {"grad_clip": 0.05},
                  about="Muon and AdamW, a clip that binds, stale gradients from a previous step"),
             Case(_training_state(27, muon=False), {"grad_clip": 0.0}, about="AdamW alone, no clipping"),
             Case(_training_state(28, muon=True), {"grad_clip": 100.0}, about="a clip too loose to act")]
    mine = with_stale_gradients(attempt)
    chosen = check("Exercise 02.6 (one training step)", mine, with_stale_gradients(reference_train_step), cases,
                   hint=("A step has four parts in a fixed order: the loss of the batch; fresh gradients "
                         "(PyTorch *adds* to whatever .grad already holds, and this model arrives with "
                         "stale ones); the gradient norm clipped, unless grad_clip is 0; then every "
                         "optimiser in the list updates. Return the loss of the batch before the update.",
                         "loss from model(x, y); for each optimiser zero_grad(set_to_none=True); "
                         "loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip) "
                         "if grad_clip; for each optimiser step(); return loss.detach().",
                         "_, loss = model(x, y)\n  for optimizer in optimizers: optimizer.zero_grad(set_to_none=True)\n"
                         "  loss.backward()\n  if grad_clip: torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)\n"
                         "  for optimizer in optimizers: optimizer.step()\n  return loss.detach()"))
    return attempt if chosen is mine else reference_train_step
