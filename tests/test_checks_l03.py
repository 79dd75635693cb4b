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


# Exercise 03.4: one step of SFT.

def test_the_reference_step_is_adamw_on_clipped_completion_gradients_computed_by_hand():
    """Independent of sft_step: the loss by log_softmax and gather (not cross_entropy), gradients by
    torch.autograd.grad, clipping by clip_grad_norm_'s rule, AdamW's first update by its formula."""
    from rlhf_helpers import sft

    model, _, batch, _ = l03._sft_state(7, "adamw", [3, 5, 2], [4, 2, 6])
    lr, clip, eps = 1e-2, 0.05, 1e-8
    logits = model(input_ids=batch["input_ids"]).logits[:, :-1]  # no mask: right padding changes no real token
    targets = batch["labels"][:, 1:]
    scored = targets != -100
    log_probs = logits.log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    loss = -(log_probs * scored).sum() / scored.sum()
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params)
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    scale = min(1.0, clip / (norm.item() + 1e-6))
    assert scale < 1.0, "the clip must bind"
    before = [p.detach().clone() for p in params]
    optimizer = l03.trainer_like_adamw(model, lr=lr)
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert sorted(set(decay.values())) == [0.0, 0.1]
    for p in params:
        p.grad = torch.ones_like(p)  # stale gradients: the step must clear them, not add to them
    got = sft.sft_step(model, optimizer, batch, l03.reference_completion_loss, max_grad_norm=clip)
    assert torch.allclose(got, loss.detach(), atol=1e-12) and not got.requires_grad
    for p, w, g in zip(params, before, grads):
        g = g * scale  # AdamW's first step: bias-corrected moments g and g**2, so lr * g / (|g| + eps)
        assert torch.allclose(p.detach(), w * (1 - lr * decay[id(p)]) - lr * g / (g.abs() + eps), atol=1e-9)


def _right_sft_step(model, optimizer, batch, loss_fn, max_grad_norm=1.0):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = loss_fn(logits, batch["labels"])
    optimizer.zero_grad()
    loss.backward()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def _step_without_the_mask_zeroing_in_place(model, optimizer, batch, loss_fn, max_grad_norm=1.0):
    loss = loss_fn(model(batch["input_ids"]).logits, batch["labels"])  # right padding: no real token sees it
    model.zero_grad(set_to_none=False)  # zeros instead of None: the same step
    loss.backward()
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def test_a_right_sft_step_is_returned_and_a_stub_falls_back(capsys):
    from rlhf_helpers import sft

    def stub(model, optimizer, batch, loss_fn, max_grad_norm=1.0):
        raise NotImplementedError

    assert l03.check_sft_step(_right_sft_step) is _right_sft_step
    assert l03.check_sft_step(_step_without_the_mask_zeroing_in_place) is _step_without_the_mask_zeroing_in_place
    assert capsys.readouterr().out.count("✓ Exercise 03.4") == 2
    assert l03.check_sft_step(stub) is sft.sft_step
    assert "not attempted" in capsys.readouterr().out


def _sft_step_without_zeroing(model, optimizer, batch, loss_fn, max_grad_norm=1.0):
    loss = loss_fn(model(input_ids=batch["input_ids"]).logits, batch["labels"])
    loss.backward()  # adds to the stale gradients
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def _sft_step_clipping_after_the_step(model, optimizer, batch, loss_fn, max_grad_norm=1.0):
    loss = loss_fn(model(input_ids=batch["input_ids"]).logits, batch["labels"])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)  # too late: the step is taken
    return loss.detach()


def _sft_step_on_every_token(model, optimizer, batch, loss_fn, max_grad_norm=1.0):
    logits = model(input_ids=batch["input_ids"]).logits
    loss = loss_fn(logits, batch["input_ids"])  # the plain LM loss: prompt and padding are learned too
    optimizer.zero_grad()
    loss.backward()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def _sft_step_always_clipping(model, optimizer, batch, loss_fn, max_grad_norm=1.0):
    loss = loss_fn(model(input_ids=batch["input_ids"]).logits, batch["labels"])
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)  # 0 wipes every gradient
    optimizer.step()
    return loss.detach()


def _sft_step_returning_a_float(model, optimizer, batch, loss_fn, max_grad_norm=1.0):
    return _right_sft_step(model, optimizer, batch, loss_fn, max_grad_norm).item()


@pytest.mark.parametrize("wrong, fragment", [
    (_sft_step_without_zeroing, "argument 1's weights['transformer.wte.weight']: values differ"),
    (_sft_step_clipping_after_the_step, "values differ, first at index"),
    (_sft_step_on_every_token, "output: values differ, first at the value"),
    (_sft_step_always_clipping, "no clipping (max_grad_norm 0, as in trl)"),
    (_sft_step_returning_a_float, "expected a torch.Tensor, got float"),
])
def test_sft_step_mistakes_are_caught_readably(wrong, fragment):
    with pytest.raises(ExerciseError) as caught:
        l03.check_sft_step(wrong)
    message = str(caught.value)
    assert "Exercise 03.4" in message and fragment in message and "hint: Five parts, in order" in message
    assert "GPT2LMHeadModel (2,080 parameters)" in message and "reference_completion_loss" in message
    assert all(len(line) < 400 for line in message.splitlines()), "models, optimisers and batches named, not dumped"
