"""Lesson 03's exercises: the chat template, prompt masking, and the completion-only loss."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from rlhf_helpers.exercises import Case, check

IGNORE_INDEX = -100  # PyTorch's cross_entropy skips targets equal to this; Hugging Face uses it too


def reference_render_chat(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """ChatML: each turn is ``<|im_start|>{role}\\n{content}<|im_end|>\\n``; then, to ask for an
    answer, the assistant's header ``<|im_start|>assistant\\n``."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def reference_completion_labels(prompt_ids: list[int], completion_ids: list[int]) -> tuple[list[int], list[int]]:
    """Inputs are prompt + completion; labels copy them, with every prompt position set to -100."""
    return prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids


def reference_completion_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next-token predictions over the positions whose label is not -100.

    ``logits`` is ``(B, T, V)`` and ``labels`` ``(B, T)``, aligned with the *inputs*: the logits at
    position t predict the label at t + 1, so both are shifted by one before comparing.
    """
    shifted_logits = logits[:, :-1].reshape(-1, logits.size(-1))
    shifted_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX)


_CHATS = (
    [{"role": "user", "content": "Continue this line about love: Tell me in sadness,"}],
    [{"role": "user", "content": "Continue this line: Now is the winter"},
     {"role": "assistant", "content": "of our discontent."}],
    [{"role": "system", "content": "Answer in verse."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Good morrow."}, {"role": "user", "content": "And?"}],
    [{"role": "user", "content": "Two\nlines"}],
)


def check_render_chat(render_chat):
    """Exercise 03.1: render conversations exactly as the course's chat template does."""
    cases = [Case((chat,), {"add_generation_prompt": gen}) for chat in _CHATS for gen in (False, True)]
    return check("Exercise 03.1 (render_chat)", render_chat, reference_render_chat, cases,
                 hint=("The model learned ChatML, so the text must match it character for character: "
                       "each message, in order, is a start marker, its role, a newline, its content, an end "
                       "marker and a newline. To ask for a reply, end with the assistant's opening line "
                       "only: no content, no end marker.",
                       "For each message m: '<|im_start|>', m['role'], '\\n', m['content'], '<|im_end|>', "
                       "'\\n', with nothing between the messages; if add_generation_prompt, append "
                       "'<|im_start|>assistant\\n'.",
                       "text = ''.join(f\"<|im_start|>{m['role']}\\n{m['content']}<|im_end|>\\n\" for m in messages)\n"
                       "  return text + ('<|im_start|>assistant\\n' if add_generation_prompt else '')"))


def check_completion_labels(completion_labels):
    """Exercise 03.2: inputs and labels with the prompt masked out."""
    cases = [Case(([2, 384, 275, 202], [336, 298, 3, 202])), Case(([5], [6]), about="one token each"),
             Case(([2, 9, 9], [3]), about="a one-token answer"),
             Case((list(range(10, 30)), list(range(40, 47))), about="a long prompt")]
    return check("Exercise 03.2 (completion_labels)", completion_labels, reference_completion_labels, cases,
                 hint=("The model reads the prompt then the completion, but should learn to write only "
                       "the completion: the labels copy the inputs, except that every prompt position holds "
                       "-100, the index the loss ignores. Do not shift by one here: the loss does that.",
                       "inputs: the prompt ids followed by the completion ids. labels: -100 repeated once "
                       "per prompt id, followed by the completion ids (as long as the inputs). Return the "
                       "tuple (inputs, labels).",
                       "return prompt_ids + completion_ids, [-100] * len(prompt_ids) + completion_ids"))


def _logits_and_labels(seed: int, batch: int, steps: int, vocab: int, masked: int):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, steps, vocab, generator=generator)
    labels = torch.randint(0, vocab, (batch, steps), generator=generator)
    labels[:, :masked] = IGNORE_INDEX  # a prompt
    labels[-1, -2:] = IGNORE_INDEX  # padding at the end of the last row
    return logits, labels


def check_completion_loss(completion_loss):
    """Exercise 03.3: the completion-only language-modelling loss."""
    cases = [Case(_logits_and_labels(0, 2, 9, 11, 4), about="2 rows, 4 prompt tokens"),
             Case(_logits_and_labels(1, 3, 6, 7, 1), about="3 rows, 1 prompt token"),
             Case(_logits_and_labels(2, 1, 12, 50, 8), about="1 row, long prompt")]
    return check("Exercise 03.3 (completion_loss)", completion_loss, reference_completion_loss, cases,
                 hint=("The logits at position t predict the token at t + 1, so shift predictions and "
                       "labels by one against each other before comparing (without it the model is scored "
                       "on copying its input). Then average the cross-entropy over the positions whose "
                       "label is not -100 only: prompt and padding do not count.",
                       "Drop the last position of the logits (logits[:, :-1]) and the first of the labels "
                       "(labels[:, 1:]); flatten them to (B * (T - 1), V) and (B * (T - 1),); "
                       "torch.nn.functional.cross_entropy with ignore_index=-100 averages over the rest.",
                       "V = logits.size(-1)\n"
                       "  return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), "
                       "labels[:, 1:].reshape(-1), ignore_index=-100)"))
