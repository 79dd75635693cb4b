"""Lesson 03's exercises: the chat template, prompt masking, the completion-only loss, and one step of
training."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from rlhf_helpers.exercises import Case, check, with_stale_gradients

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


# Exercise 03.4: one step of SFT, on tiny GPT-2 models. They are float64: AdamW's first step moves a
# weight by about the learning rate whatever its gradient's size, so in float32 the rounding errors of
# two right answers (a mask passed or not, say) could move a weight whose true gradient is 0 apart.

def _tiny_lm(seed: int):
    """A randomly initialised 2-layer GPT-2 language model (2,080 weights), no dropout, float64."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=24, n_positions=16, n_embd=8, n_layer=2, n_head=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config).double()


def _sft_batch(seed: int, prompt_lengths: list[int], completion_lengths: list[int], vocab: int = 24) -> dict:
    """A batch as trl's collator makes it: right-padded with the pad token 0, labels -100 on the
    prompt and the padding."""
    generator = torch.Generator().manual_seed(seed)
    width = max(p + c for p, c in zip(prompt_lengths, completion_lengths))
    batch = {"input_ids": torch.zeros(len(prompt_lengths), width, dtype=torch.long),
             "attention_mask": torch.zeros(len(prompt_lengths), width, dtype=torch.long),
             "labels": torch.full((len(prompt_lengths), width), IGNORE_INDEX)}
    for row, (p, c) in enumerate(zip(prompt_lengths, completion_lengths)):
        ids = torch.randint(1, vocab, (p + c,), generator=generator)
        batch["input_ids"][row, :p + c], batch["attention_mask"][row, :p + c] = ids, 1
        batch["labels"][row, p:p + c] = ids[p:]
    return batch


def trainer_like_adamw(model, lr: float = 1e-2, weight_decay: float = 0.1) -> torch.optim.AdamW:
    """AdamW with the Hugging Face Trainer's two parameter groups: weight decay on the weight
    matrices and embeddings, none on biases and LayerNorms."""
    no_decay = [p for n, p in model.named_parameters() if "bias" in n or ".ln_" in n]
    decay = [p for n, p in model.named_parameters() if not ("bias" in n or ".ln_" in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def case_optimizer(model, kind: str) -> torch.optim.Optimizer:
    """The optimiser a step exercise's case hands the learner: ``"adamw"`` as the Trainer sets it
    up, or ``"sgd"`` with momentum (a step must work with any optimiser it is given)."""
    if kind == "adamw":
        return trainer_like_adamw(model)
    return torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)


def _sft_state(seed: int, optimizer: str, prompt_lengths, completion_lengths) -> tuple:
    model = _tiny_lm(seed)
    batch = _sft_batch(seed + 1, prompt_lengths, completion_lengths)
    return model, case_optimizer(model, optimizer), batch, reference_completion_loss


def check_sft_step(sft_step):
    """Exercise 03.4: one optimisation step of SFT on a collated batch."""
    __tracebackhide__ = True
    from rlhf_helpers.sft import sft_step as reference_sft_step

    cases = [Case(_sft_state(40, "adamw", [3, 5, 2], [4, 2, 6]), {"max_grad_norm": 0.05},
                  about="AdamW with the Trainer's two weight-decay groups, a clip that binds, stale gradients"),
             Case(_sft_state(41, "sgd", [2, 6], [5, 3]), {"max_grad_norm": 0.0},
                  about="SGD with momentum, no clipping (max_grad_norm 0, as in trl)"),
             Case(_sft_state(42, "adamw", [4], [7]), {"max_grad_norm": 100.0}, about="one row, a clip too loose to act")]
    mine = with_stale_gradients(sft_step)
    chosen = check("Exercise 03.4 (sft_step)", mine, with_stale_gradients(reference_sft_step), cases,
                   hint=("Five parts, in order: the logits of the batch; the loss, from the loss function you are "
                         "given and the batch's labels; fresh gradients (PyTorch adds to old ones, and this model "
                         "arrives with stale ones); their total norm clipped to max_grad_norm, unless it is 0, "
                         "before the optimiser reads them; one optimiser step. Give back the loss from before "
                         "the step, detached.",
                         "logits from model(input_ids=batch['input_ids'], attention_mask=batch['attention_mask'])"
                         ".logits; loss_fn(logits, batch['labels']); optimizer.zero_grad(); loss.backward(); "
                         "torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm) when max_grad_norm "
                         "> 0; optimizer.step(); return loss.detach().",
                         "logits = model(input_ids=batch['input_ids'], attention_mask=batch['attention_mask']).logits\n"
                         "  loss = loss_fn(logits, batch['labels'])\n  optimizer.zero_grad()\n  loss.backward()\n"
                         "  if max_grad_norm > 0:\n      torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)\n"
                         "  optimizer.step()\n  return loss.detach()"))
    return sft_step if chosen is mine else reference_sft_step
