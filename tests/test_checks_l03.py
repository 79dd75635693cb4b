"""Lesson 03's exercise checks accept the reference and catch the classic mistakes."""

import pytest
import torch
from torch.nn import functional as F

from rlhf_helpers.checks import l03_supervised_finetuning as l03
from rlhf_helpers.exercises import ExerciseError
from rlhf_helpers.tokenizers import course_tokenizer


def test_reference_render_chat_is_the_course_template(module_artifacts):
    tokenizer = course_tokenizer()
    for chat in l03._CHATS:
        for gen in (False, True):
            assert l03.reference_render_chat(chat, gen) == tokenizer.apply_chat_template(
                chat, tokenize=False, add_generation_prompt=gen)


def test_references_pass_their_checks(capsys):
    assert l03.check_render_chat(l03.reference_render_chat) is l03.reference_render_chat
    assert l03.check_completion_labels(l03.reference_completion_labels) is l03.reference_completion_labels
    assert l03.check_completion_loss(l03.reference_completion_loss) is l03.reference_completion_loss
    assert capsys.readouterr().out.count("✓") == 3


def test_stubs_fall_back_to_the_reference(capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError

    assert l03.check_completion_loss(stub) is l03.reference_completion_loss
    assert "not attempted" in capsys.readouterr().out


def _no_generation_prompt(messages, add_generation_prompt=False):
    return l03.reference_render_chat(messages)


def _no_trailing_newline(messages, add_generation_prompt=False):
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>" for m in messages)


def _labels_mask_completion(prompt_ids, completion_ids):
    return prompt_ids + completion_ids, prompt_ids + [-100] * len(completion_ids)


def _labels_shifted(prompt_ids, completion_ids):
    return prompt_ids + completion_ids, [-100] * (len(prompt_ids) - 1) + completion_ids + [-100]


def _loss_unshifted(logits, labels):
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)


def _loss_counts_prompt(logits, labels):
    labels = labels.clamp(min=0)  # -100 becomes token 0: the prompt is learned too
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1))


def _loss_mean_of_rows(logits, labels):
    per_row = [F.cross_entropy(l[:-1], y[1:], ignore_index=-100) for l, y in zip(logits, labels)]
    return torch.stack(per_row).mean()  # rows weigh equally, not tokens


@pytest.mark.parametrize("check, wrong", [
    (l03.check_render_chat, _no_generation_prompt),
    (l03.check_render_chat, _no_trailing_newline),
    (l03.check_completion_labels, _labels_mask_completion),
    (l03.check_completion_labels, _labels_shifted),
    (l03.check_completion_loss, _loss_unshifted),
    (l03.check_completion_loss, _loss_counts_prompt),
    (l03.check_completion_loss, _loss_mean_of_rows),
])
def test_classic_mistakes_are_caught(check, wrong):
    with pytest.raises(ExerciseError, match="Exercise 03"):
        check(wrong)
