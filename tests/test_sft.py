"""The `sft` artifact: trl's SFTTrainer on the demonstrations, trained tiny, saved and reloaded."""

import pytest
import torch

from rlhf_helpers import env, instructions, sft
from tests.test_base_artifact import TINY


def test_sft_artifact_trains_on_completions_only_and_reloads(monkeypatch, isolated_artifacts):
    monkeypatch.setattr(env, "get_profile", lambda name=None: TINY)
    folder = sft.sft_model_path()
    assert folder.is_relative_to(isolated_artifacts / "sft") and (folder / "model" / "model.safetensors").exists()
    losses = [row["loss"] for row in sft.sft_log_history() if "loss" in row]
    assert len(losses) >= 2 and all(loss > 0 for loss in losses)
    model, tokenizer = sft.load_sft_model()
    tasks = instructions.make_tasks("heldout", n=6)
    responses = sft.generate_responses(model, tokenizer, [t.prompt for t in tasks], max_new_tokens=8)
    assert len(responses) == 6 and all(isinstance(r, str) for r in responses)
    assert sft.generate_responses(model, tokenizer, [tasks[0].prompt], max_new_tokens=8, seed=3) == \
        sft.generate_responses(model, tokenizer, [tasks[0].prompt], max_new_tokens=8, seed=3)


def test_trl_masks_the_prompt_out_of_the_labels(monkeypatch):
    """What lesson 03 teaches: the loss covers the answer (and its end token), not the prompt."""
    from trl import SFTTrainer

    from rlhf_helpers.tokenizers import course_tokenizer
    from rlhf_helpers.gpt import GPT, GPTConfig, to_hf_gpt2

    tokenizer = course_tokenizer()
    model = to_hf_gpt2(GPT(GPTConfig(vocab_size=len(tokenizer), block_size=128, n_layer=1, n_head=2, n_embd=16)),
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    task = instructions.make_tasks("train", n=1)[0]
    trainer = SFTTrainer(model=model, args=sft.sft_trainer_config(TINY.sft, "/tmp/unused-sft-output"),
                         train_dataset=sft.demonstrations_dataset([task]), processing_class=tokenizer)
    row = trainer.train_dataset[0]
    prompt_len = len(tokenizer(sft.chat_prompt(tokenizer, task.prompt), add_special_tokens=False)["input_ids"])
    labels = torch.tensor(row["labels"]) if "labels" in row else None
    if labels is None:  # older trl: a completion mask instead of ready labels
        labels = torch.tensor(row["input_ids"]).masked_fill(torch.tensor(row["completion_mask"]) == 0, -100)
    assert (labels[:prompt_len] == -100).all() and (labels[prompt_len:] != -100).all()
    assert tokenizer.decode(labels[prompt_len:]).startswith(task.response)


def test_prompt_tuned_generation_matches_the_adapters_forward_pass_up_to_a_full_context():
    """Generating from a prompt-tuned model feeds its virtual tokens once, before the prompt.

    peft's own generate broke on transformers 5.24 (the virtual tokens came back at every step and
    the positions overran the context); the course's route must fill the context exactly and agree
    with the adapter's forward pass.
    """
    from peft import PromptTuningConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                      bos_token_id=0, eos_token_id=0))
    model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)).eval()
    batch = {"input_ids": torch.randint(5, 50, (2, 10)), "attention_mask": torch.ones(2, 10, dtype=torch.long)}
    generator, inputs = sft._generation_inputs(model, batch)
    room = sft._context_room(model, 10)
    assert room == 32 - 10 - 4
    out = generator.generate(**inputs, max_new_tokens=room, min_new_tokens=room, do_sample=False, pad_token_id=1)
    assert sft._new_length(out, inputs) == out.size(1) == room
    with torch.no_grad():
        first = model(**batch).logits[:, -1].argmax(-1)
    assert torch.equal(out[:, 0], first)


@pytest.mark.usefixtures("one_thread")
def test_one_trl_step_leaves_the_weights_of_sft_step_and_lesson_03s_comparison_catches_a_wrong_step(tmp_path):
    """Lesson 03's comparison on a tiny model: one SFTTrainer step (SGD, no warm-up) on all the
    demonstrations, and sft_step with the learning rate and clip of trl's arguments, end with the same
    weights; the comparison rejects a step without the clip or at another learning rate, and the
    recipe's own warm-up would take the one step at learning rate 0, which is why the lesson also
    asserts that trl's step moved the weights."""
    import copy

    from rlhf_helpers.checks.l03_supervised_finetuning import reference_completion_loss
    from rlhf_helpers.exercises import compare
    from rlhf_helpers.gpt import GPT, GPTConfig, to_hf_gpt2
    from rlhf_helpers.tokenizers import course_tokenizer

    tokenizer = course_tokenizer()
    torch.manual_seed(0)
    start = to_hf_gpt2(GPT(GPTConfig(vocab_size=len(tokenizer), block_size=128, n_layer=1, n_head=2, n_embd=16)),
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    tasks = instructions.make_tasks("train", n=4)
    one_step = env.SFTSizes(max_steps=1, batch_size=len(tasks), lr=1e-2)
    same = lambda a, b: compare(a, b, rtol=1e-6, atol=1e-8) is None  # the lesson's comparison

    def trl_step(**overrides):
        theirs = copy.deepcopy(start)
        trainer = sft.sft_trainer(theirs, tokenizer, tasks, one_step, str(tmp_path), optim="sgd",
                                  max_grad_norm=0.1, **overrides)
        trainer.train()
        return theirs, trainer

    theirs, trainer = trl_step(warmup_steps=0)
    logged, args = trainer.state.log_history[0], trainer.args
    assert logged["learning_rate"] == args.learning_rate and logged["grad_norm"] > args.max_grad_norm, "the clip binds"
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(tasks))])

    def yours(lr=args.learning_rate, max_grad_norm=args.max_grad_norm):
        model = copy.deepcopy(start)
        sft.sft_step(model, torch.optim.SGD(model.parameters(), lr=lr), batch, reference_completion_loss, max_grad_norm)
        return model

    assert not same(start, theirs) and same(yours(), theirs)
    assert not same(yours(max_grad_norm=0.0), theirs), "a step without the clip"
    assert not same(yours(lr=2 * args.learning_rate), theirs), "a step at another learning rate"
    warmed, trainer = trl_step()  # the recipe's warm-up: at least one step, so the only one has learning rate 0
    assert trainer.state.log_history[0]["learning_rate"] == 0.0 and same(warmed, start)
