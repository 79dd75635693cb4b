"""Lesson 04's checks accept right answers, fall back when not attempted, and reject the classic mistakes."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rlhf_helpers import exercises, lora
from rlhf_helpers.checks import l04_lora as l04
from rlhf_helpers.exercises import ExerciseError

CHECKS = [
    (l04.check_lora_forward, l04.reference_lora_forward),
    (l04.check_lora_forward_conv1d, l04.reference_lora_forward_conv1d),
    (l04.check_merged_weight, l04.reference_merged_weight),
    (l04.check_count_lora_parameters, l04.reference_count_lora_parameters),
]


def test_references_agree_with_the_lora_layer():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    for base in (nn.Linear(8, 6), Conv1D(6, 8)):
        layer = lora.LoRALinear(base, r=4, alpha=8.0)
        with torch.no_grad():
            layer.B.normal_()
        W, b, A, B = base.weight, base.bias, layer.A, layer.B
        if layer.is_conv1d:
            assert torch.allclose(l04.reference_lora_forward_conv1d(x, W, b, A, B, 8.0), layer(x), atol=1e-6)
            assert torch.allclose(l04.reference_merged_weight(W.T, A, B, 8.0), layer.merge().weight.T, atol=1e-6)
        else:
            assert torch.allclose(l04.reference_lora_forward(x, W, b, A, B, 8.0), layer(x), atol=1e-6)
            assert torch.allclose(l04.reference_merged_weight(W, A, B, 8.0), layer.merge().weight, atol=1e-6)
    shapes = [(16, 48), (16, 16), (16, 64), (64, 16)]
    assert l04.reference_count_lora_parameters(shapes, 4) == lora.lora_parameter_count(shapes, 4) == 4 * 256


@pytest.mark.parametrize("checker, reference", CHECKS)
def test_references_pass(checker, reference, capsys):
    assert checker(reference) is reference
    assert "✓" in capsys.readouterr().out


def merged_form(x, W, b, A, B, alpha):  # a different, equally right way: merge first, then one matmul
    return F.linear(x, W + (alpha / A.shape[0]) * B @ A, b)


def einsum_form(shapes, r):
    return int(torch.tensor([r * (i + o) for i, o in shapes] or [0]).sum())


@pytest.mark.parametrize("checker, answer", [
    (l04.check_lora_forward, merged_form),
    (l04.check_lora_forward_conv1d, lambda x, W, b, A, B, alpha: merged_form(x, W.T, b, A, B, alpha)),
    (l04.check_count_lora_parameters, einsum_form),
])
def test_other_right_answers_pass(checker, answer):
    assert checker(answer) is answer


def not_written(*args, **kwargs):
    raise NotImplementedError


@pytest.mark.parametrize("checker, reference", CHECKS)
def test_a_stub_falls_back_to_the_reference(checker, reference, capsys):
    assert checker(not_written) is reference
    assert "not attempted" in capsys.readouterr().out


# The classic mistakes, each written as a learner would.

def forgot_scale(x, W, b, A, B, alpha):
    return x @ W.T + b + x @ A.T @ B.T


def alpha_not_over_r(x, W, b, A, B, alpha):
    return x @ W.T + b + alpha * (x @ A.T @ B.T)


def A_and_B_swapped(x, W, b, A, B, alpha):
    return x @ W.T + b + (alpha / A.shape[0]) * (x @ B @ A)


def forgot_bias(x, W, b, A, B, alpha):
    return x @ W.T + (alpha / A.shape[0]) * (x @ A.T @ B.T)


def conv1d_not_transposed(x, W, b, A, B, alpha):  # nn.Linear's formula on a Conv1D weight
    return l04.reference_lora_forward(x, W, b, A, B, alpha)


def conv1d_adapters_transposed_too(x, W, b, A, B, alpha):  # takes A and B to be (in, out)-style too
    return x @ W + b + (alpha / A.shape[0]) * (x @ A @ B)


def conv1d_forgot_scale(x, W, b, A, B, alpha):
    return x @ W + b + x @ A.T @ B.T


def merged_without_scale(W, A, B, alpha):
    return W + B @ A


def merged_with_alpha(W, A, B, alpha):
    return W + alpha * B @ A


def merged_transposed(W, A, B, alpha):
    return W + (alpha / A.shape[0]) * (B @ A).T


@pytest.mark.parametrize("checker, wrong, name", [
    (l04.check_lora_forward, forgot_scale, "04.1"),
    (l04.check_lora_forward, alpha_not_over_r, "04.1"),
    (l04.check_lora_forward, A_and_B_swapped, "04.1"),
    (l04.check_lora_forward, forgot_bias, "04.1"),
    (l04.check_lora_forward, lambda x, W, b, A, B, alpha: x @ W.T + b, "04.1"),  # no LoRA path at all
    (l04.check_lora_forward_conv1d, conv1d_not_transposed, "04.2"),
    (l04.check_lora_forward_conv1d, conv1d_adapters_transposed_too, "04.2"),
    (l04.check_lora_forward_conv1d, conv1d_forgot_scale, "04.2"),
    (l04.check_merged_weight, merged_without_scale, "04.3"),
    (l04.check_merged_weight, merged_with_alpha, "04.3"),
    (l04.check_merged_weight, merged_transposed, "04.3"),
    (l04.check_count_lora_parameters, lambda shapes, r: sum(r * i * o for i, o in shapes), "04.4"),
    (l04.check_count_lora_parameters, lambda shapes, r: sum(i + o for i, o in shapes), "04.4"),
    (l04.check_count_lora_parameters, lambda shapes, r: sum(r * (i + o) + i * o for i, o in shapes), "04.4"),
    (l04.check_count_lora_parameters, lambda shapes, r: r * (shapes[0][0] + shapes[0][1]), "04.4"),
])
def test_classic_mistakes_are_caught(checker, wrong, name):
    with pytest.raises(ExerciseError, match=f"Exercise {name}"):
        checker(wrong)


def test_the_message_names_the_input_and_the_hint(capsys):
    with pytest.raises(ExerciseError) as caught:
        l04.check_lora_forward_conv1d(conv1d_not_transposed)
    message = str(caught.value)
    assert "input tried" in message and "hint" in message and "(in, out)" in message
    assert "x @ W + b" not in message, "the first hint explains the layout; the formula comes with hint()"
    exercises.hint()
    assert "x @ W + b" in capsys.readouterr().out


def test_the_square_case_catches_a_missing_transpose_as_a_wrong_answer():
    """On a square layer forgetting the transpose does not crash: the values alone give it away."""
    with pytest.raises(ExerciseError, match="wrong answer") as caught:
        l04.check_lora_forward_conv1d(lambda x, W, b, A, B, alpha: (
            conv1d_not_transposed(x, W, b, A, B, alpha) if W.shape[0] == W.shape[1]
            else l04.reference_lora_forward_conv1d(x, W, b, A, B, alpha)))
    assert "square" in str(caught.value)
