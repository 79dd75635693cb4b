"""Lesson 04's exercises: a LoRA layer by hand, on both weight layouts, merged, and counted.

Every function takes the adapter's ``alpha`` and finds the rank ``r`` from ``A``'s shape, so the
scale ``alpha / r`` is part of the exercise. ``A`` is ``(r, in)`` and ``B`` is ``(out, r)`` in
both layouts; only the frozen ``W`` differs: ``(out, in)`` for ``nn.Linear``, ``(in, out)`` for
GPT-2's ``Conv1D``. Dropout is left out: at evaluation time it does nothing.
"""

from __future__ import annotations

from typing import Callable

import torch

from rlhf_helpers.exercises import Case, check


def reference_lora_forward(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, A: torch.Tensor,
                           B: torch.Tensor, alpha: float) -> torch.Tensor:
    """``x @ W.T + b + (alpha / r) * (x @ A.T) @ B.T`` for an ``nn.Linear``-style ``W`` ``(out, in)``."""
    scale = alpha / A.shape[0]  # r is the number of rows of A
    return x @ W.T + b + scale * ((x @ A.T) @ B.T)


def reference_lora_forward_conv1d(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, A: torch.Tensor,
                                  B: torch.Tensor, alpha: float) -> torch.Tensor:
    """The same layer when ``W`` is stored ``(in, out)``, as GPT-2's ``Conv1D`` does: ``x @ W`` here."""
    scale = alpha / A.shape[0]
    return x @ W + b + scale * ((x @ A.T) @ B.T)


def reference_merged_weight(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float) -> torch.Tensor:
    """``W + (alpha / r) * B @ A``: one ``(out, in)`` matrix that computes both paths at once."""
    return W + (alpha / A.shape[0]) * (B @ A)


def reference_count_lora_parameters(shapes: list[tuple[int, int]], r: int) -> int:
    """``sum(r * (in + out))`` over the adapted layers: ``A`` has ``r * in`` numbers, ``B`` has ``out * r``."""
    return sum(r * (n_in + n_out) for n_in, n_out in shapes)


def _randn(*shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _layer(x_shape, n_in: int, n_out: int, r: int, alpha: float, seed: int, *, conv1d: bool = False,
           zero_B: bool = False) -> tuple:
    """Arguments ``(x, W, b, A, B, alpha)`` for one layer; ``B`` is non-zero unless ``zero_B``."""
    x = _randn(*x_shape, n_in, seed=seed)
    W = _randn(n_in, n_out, seed=seed + 1) if conv1d else _randn(n_out, n_in, seed=seed + 1)
    b = _randn(n_out, seed=seed + 2)
    A = _randn(r, n_in, seed=seed + 3, scale=0.5)
    B = torch.zeros(n_out, r) if zero_B else _randn(n_out, r, seed=seed + 4, scale=0.5)
    return x, W, b, A, B, alpha


def lora_forward_cases(conv1d: bool = False) -> list[Case]:
    """Batched and flat inputs, a square layer (where A and B swapped still fit), r = 1, B = 0."""
    return [
        Case(_layer((2, 4), 8, 6, r=4, alpha=8.0, seed=1, conv1d=conv1d), about="batch 2, 4 tokens, 8 -> 6, r=4, alpha=8"),
        Case(_layer((5,), 8, 8, r=2, alpha=1.0, seed=11, conv1d=conv1d), about="a square layer, r=2, alpha=1"),
        Case(_layer((3,), 6, 10, r=1, alpha=4.0, seed=21, conv1d=conv1d), about="rank r=1"),
        Case(_layer((2, 3), 8, 6, r=4, alpha=8.0, seed=31, conv1d=conv1d, zero_B=True),
             about="B = 0, as at initialisation: exactly the frozen layer"),
    ]


def check_lora_forward(attempt: Callable) -> Callable:
    """Check Exercise 04.1; return the LoRA forward pass to use from here on."""
    __tracebackhide__ = True
    return check("Exercise 04.1 (a LoRA layer's forward pass)", attempt, reference_lora_forward,
                 lora_forward_cases(),
                 hint=("The output is the frozen layer's plus LoRA's low-rank update. W is stored (out, in), "
                       "as in nn.Linear, so it is used transposed. The update goes down from in to r "
                       "dimensions with A (r, in), then up to out with B (out, r), and is scaled by alpha / r "
                       "(r is the number of rows of A), not by alpha alone.",
                       "Frozen path: x @ W.T + b. LoRA path: (x @ A.T) @ B.T, of shape (..., out). Add the "
                       "LoRA path times alpha / r, with r = A.shape[0].",
                       "return x @ W.T + b + (alpha / A.shape[0]) * ((x @ A.T) @ B.T)"))


def check_lora_forward_conv1d(attempt: Callable) -> Callable:
    """Check Exercise 04.2; return the Conv1D-layout forward pass to use from here on."""
    __tracebackhide__ = True
    return check("Exercise 04.2 (LoRA on GPT-2's Conv1D layout)", attempt, reference_lora_forward_conv1d,
                 lora_forward_cases(conv1d=True),
                 hint=("The same layer, stored differently: GPT-2's Conv1D keeps W as (in, out), the "
                       "transpose of nn.Linear's, so the frozen path needs no transpose. A (r, in) and "
                       "B (out, r) keep nn.Linear's layout, as in peft, so the LoRA path is as in 04.1.",
                       "Frozen path: x @ W + b, with no .T. LoRA path, still scaled by alpha / r with "
                       "r = A.shape[0]: (x @ A.T) @ B.T.",
                       "return x @ W + b + (alpha / A.shape[0]) * ((x @ A.T) @ B.T)"))


def merged_weight_cases() -> list[Case]:
    """A wide layer, a square one, r = 1, and B = 0 (nothing to merge)."""
    cases = []
    for (n_in, n_out, r, alpha, seed, zero_B), about in [
        ((8, 6, 4, 8.0, 41, False), "8 -> 6, r=4, alpha=8"),
        ((8, 8, 2, 1.0, 51, False), "a square layer, r=2, alpha=1"),
        ((5, 12, 1, 4.0, 61, False), "rank r=1"),
        ((8, 6, 4, 8.0, 71, True), "B = 0: the merged weight is W"),
    ]:
        _, W, _, A, B, alpha = _layer((1,), n_in, n_out, r, alpha, seed, zero_B=zero_B)
        cases.append(Case((W, A, B, alpha), about=about))
    return cases


def check_merged_weight(attempt: Callable) -> Callable:
    """Check Exercise 04.3; return the merge to use from here on."""
    __tracebackhide__ = True
    return check("Exercise 04.3 (merging the update into W)", attempt, reference_merged_weight,
                 merged_weight_cases(),
                 hint=("The merged weight computes both paths at once, and must be a NEW tensor: "
                       "the base weight W stays as it was (updating it in place would change the model).",
                       "W is (out, in); B @ A is (out, r) @ (r, in) = (out, in), the same shape (A @ B "
                       "is not). Scale it by alpha / r, with r = A.shape[0].",
                       "return W + (alpha / A.shape[0]) * (B @ A)"))


def count_cases() -> list[Case]:
    """One layer, a GPT-2 block, the course's GPT-2, r = 1, and no layers at all."""
    block = lambda d: [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)]  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    return [
        Case(([(16, 48)], 8), about="one layer, 16 -> 48, r=8"),
        Case((block(16), 4), about="a GPT-2 block of width 16, r=4"),
        Case((block(128) * 4, 8), about="the course's GPT-2: 4 blocks of width 128, r=8"),
        Case(([(64, 16), (16, 64)], 1), about="rank r=1"),
        Case(([], 8), about="no adapted layers"),
    ]


def check_count_lora_parameters(attempt: Callable) -> Callable:
    """Check Exercise 04.4; return the parameter count to use from here on."""
    __tracebackhide__ = True
    return check("Exercise 04.4 (counting LoRA's trainable parameters)", attempt,
                 reference_count_lora_parameters, count_cases(),
                 hint=("Only the adapters train: for each adapted layer, A holds r rows of `in` numbers "
                       "and B holds `out` rows of r numbers. The frozen weight (in times out) does not "
                       "count, and the adapters are not r times in times out either. Sum over the layers "
                       "(no layers: 0).",
                       "Per layer (in, out): r * in for A plus out * r for B, that is r * (in + out). "
                       "Sum that over the list of shapes.",
                       "return sum(r * (n_in + n_out) for n_in, n_out in shapes)"))
