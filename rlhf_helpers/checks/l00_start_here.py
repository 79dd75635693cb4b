"""Lesson 00's warm-up exercise: a numerically stable softmax."""

from __future__ import annotations

from typing import Callable

import torch

from rlhf_helpers.exercises import Case, check


def reference_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """softmax(x)_i = exp(x_i) / sum_j exp(x_j), computed without overflow.

    Subtracting the maximum changes nothing mathematically (the factor exp(-max) cancels) but
    keeps every exponent <= 0, so exp() never overflows and the largest term is exactly 1.
    """
    shifted = logits - logits.amax(dim=dim, keepdim=True)
    exps = shifted.exp()
    return exps / exps.sum(dim=dim, keepdim=True)


def softmax_cases() -> list[Case]:
    """Ordinary, batched and extreme inputs: the extremes are where naive code breaks."""
    g = torch.Generator().manual_seed(0)
    return [
        Case((torch.tensor([1.0, 2.0, 3.0]),), about="a small vector"),
        Case((torch.randn(4, 5, generator=g),), about="a batch of rows"),
        Case((torch.randn(3, 4, generator=g),), {"dim": 0}, about="along dim 0"),
        Case((torch.tensor([1000.0, 1001.0, 1002.0]),), about="huge logits: exp overflows"),
        Case((torch.tensor([-1000.0, -1000.0]),), about="very negative logits: exp underflows"),
        Case((torch.tensor([0.0, float("-inf"), 1.0]),), about="a masked (-inf) entry"),
        Case((torch.tensor([[5.0]]),), about="a single element"),
        Case((torch.tensor([[1000.0, 1001.0], [-5.0, -6.0]]),),
             about="rows on very different scales: each row needs its own maximum"),
    ]


def check_softmax(attempt: Callable) -> Callable:
    """Check Exercise 00.1; return the softmax to use from here on."""
    __tracebackhide__ = True
    return check(
        "Exercise 00.1 (stable softmax)",
        attempt,
        reference_softmax,
        softmax_cases(),
        hint=("exp() overflows past about 88 in float32, and underflows to 0 below about -100. But "
              "softmax(x) equals softmax(x - c) for any constant c: choose c to keep exp() in range.",
              "Subtract each row's own largest logit along `dim` (not one maximum of the whole "
              "tensor), keeping the dimension so that it broadcasts: logits.amax(dim=dim, keepdim=True).",
              "shifted = logits - logits.amax(dim=dim, keepdim=True); exps = shifted.exp(); "
              "return exps / exps.sum(dim=dim, keepdim=True)"),
    )
