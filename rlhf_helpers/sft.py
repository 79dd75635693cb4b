"""Supervised fine-tuning (lesson 03): teach the base model to answer instructions.

Step 1 of the InstructGPT recipe. The demonstrations of ``rlhf_helpers.instructions`` become a
*conversational prompt-completion* dataset; trl's ``SFTTrainer`` renders each with the course's
ChatML template and computes the loss on the completion only (the prompt is masked with -100),
and the result is saved as the ``sft`` artifact. Generation helpers measure the held-out
instruction-following rate before and after.

Left out: packing, LoRA (lesson 04), multi-turn data, evaluation during training.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from dataclasses import asdict

import torch

from rlhf_helpers import evaluation, gpt, instructions, lora, models
from rlhf_helpers.tokenizers import end_of_answer_id

SFT_VERSION = 2  # bump when the recipe changes, so cached SFT models are rebuilt
SFT_SEED = 0


def demonstrations_dataset(tasks: list[instructions.Task]):
    """Tasks as a ``datasets.Dataset`` of chat prompts and completions, the format trl expects."""
    from datasets import Dataset

    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": t.prompt}],
         "completion": [{"role": "assistant", "content": t.response}]}
        for t in tasks
    ])


def trainer_bf16() -> bool:
    """Whether trl's Trainer trains in bf16 mixed precision: on CUDA, when the profile asks
    (``env.autocast_dtype``: the ``gpu`` profile does). On a CPU, only in a dry run
    (``$RLHF_AUTOCAST_ANY_DEVICE``)."""
    from rlhf_helpers.env import autocast_dtype

    return autocast_dtype("cuda" if torch.cuda.is_available() else "cpu") is torch.bfloat16


def trainer_settings(output_dir: str, steps: int, batch_size: int, lr: float, seed: int) -> dict:
    """What every trl trainer of the course shares (SFT here; reward, DPO and GRPO later): AdamW with a
    cosine schedule after a short warm-up, bf16 only where the profile asks for it on CUDA
    (``trainer_bf16``), no activation checkpointing (trl turns it on by default; our models are
    small), no saving, no hub, no progress bar of its own.

    ``batch_size`` is the global batch: under ``accelerate launch`` each of N processes takes
    ``batch_size / N`` examples a step (``distributed.per_process``), so the recipe trains on the
    same batches however many processes share it."""
    from rlhf_helpers import distributed

    per_device = distributed.per_process(batch_size, "The batch")
    return dict(output_dir=output_dir, max_steps=steps, per_device_train_batch_size=per_device, learning_rate=lr,
                lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20), logging_steps=max(1, steps // 30),
                use_cpu=not torch.cuda.is_available(), bf16=trainer_bf16(), activation_checkpointing=False,
                save_strategy="no", report_to=[], seed=seed, disable_tqdm=True, dataloader_num_workers=0)


def trained_model(trainer):
    """The model ``trainer`` trained, in eval mode, as a plain model again.

    With ``bf16=True`` accelerate wraps the model's ``forward`` in bfloat16 autocast for training,
    and the wrapper stays on the model afterwards: whatever the recipe computes with it next (an
    evaluation, the reward model's normalisation statistics) would run in bfloat16 without saying
    so, and bfloat16's 8-bit mantissa can round a barely trained reward model's scores to a single
    value. ``keep_fp32_wrapper=False`` takes the wrapper off; in float32 there is none, and the
    model comes back as it is.
    """
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(trainer.model, keep_fp32_wrapper=False).eval()


def quiet_trainer(trainer):
    """Remove the Trainer's printer: logs go to ``log_history``, not into the notebook's cells."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def sft_trainer_config(sizes, output_dir: str, **overrides):
    """An ``SFTConfig`` for a CPU or a GPU (see ``trainer_settings``)."""
    from trl import SFTConfig

    settings = trainer_settings(output_dir, sizes.max_steps, sizes.batch_size, sizes.lr, SFT_SEED)
    return SFTConfig(**{**settings, "max_length": 128, **overrides})


@contextlib.contextmanager
def quiet_datasets():
    """Silence the ``datasets`` progress bars (trl tokenizes in several passes) inside the block."""
    import datasets

    was_enabled = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def sft_trainer(model, tokenizer, tasks: list[instructions.Task], sizes, output_dir: str, callbacks=None,
                peft_config=None, **overrides):
    """trl's ``SFTTrainer`` on ``tasks``, configured for this machine, printing nothing.

    The trainer tokenizes the demonstrations when it is built: ``trainer.train_dataset`` then holds
    ``input_ids`` and ``labels`` with the prompt masked, and ``trainer.data_collator`` pads a batch.
    With a ``peft_config`` (lesson 04) trl wraps the model and trains only the adapter; prompt
    tuning's virtual tokens take places in the context, so the demonstrations get fewer.
    """
    from trl import SFTTrainer

    virtual_tokens = getattr(peft_config, "num_virtual_tokens", None) or 0
    config = sft_trainer_config(sizes, output_dir, max_length=models.context_length(model) - virtual_tokens,
                                **overrides)
    with quiet_datasets(), lora.quiet_peft():
        trainer = SFTTrainer(model=model, args=config, train_dataset=demonstrations_dataset(tasks),
                             processing_class=tokenizer, callbacks=callbacks, peft_config=peft_config)
    return quiet_trainer(trainer)


def sft_step(model, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor], loss_fn,
             max_grad_norm: float = 1.0) -> torch.Tensor:
    """One optimisation step of SFT, as trl's ``SFTTrainer`` takes it; return the batch's loss
    (before the update, detached).

    ``batch`` is what trl's collator makes of a few demonstrations: ``input_ids``,
    ``attention_mask`` and ``labels``, each ``(B, T)``, right-padded, the labels -100 on the prompt
    and the padding. The model's logits and these labels give the loss, ``loss_fn(logits, labels)``:
    the completion-only loss of lesson 03's exercise 03.3, which shifts by one. The rest is the
    update every step of the course shares (``gpt.update``): clear the old gradients, backward,
    clip their norm to ``max_grad_norm`` (0: no clipping, as in ``TrainingArguments``), step.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return gpt.update(model, [optimizer], loss_fn(logits, batch["labels"]), max_grad_norm)


def chat_prompt(tokenizer, prompt: str) -> str:
    """The text the model sees before it answers: the user turn, then the assistant's header."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


@torch.no_grad()
def generate_responses(model, tokenizer, prompts: list[str], *, max_new_tokens: int = evaluation.MAX_NEW_TOKENS,
                       temperature: float = evaluation.TEMPERATURE, top_k: int = 0, seed: int = evaluation.SEED,
                       batch_size: int = evaluation.BATCH_SIZE) -> list[str]:
    """Sample one response per prompt through the chat template; stop at the end of the answer
    (``<|im_end|>`` in the course's template; ``tokenizers.end_of_answer_id``).

    The defaults are the evaluation protocol's sampling (``evaluation``: temperature 0.7, the
    whole distribution, 32 new tokens). Unlike ``evaluation.sample`` this also serves peft models
    whose adapter is a learned prompt (lesson 04). Prompts are left-padded so that every row's
    answer starts at the same position. The same ``seed`` gives the same responses on the same
    device.
    """
    model.eval()
    device = next(model.parameters()).device
    stop_ids = [end_of_answer_id(tokenizer), tokenizer.eos_token_id]
    torch.manual_seed(seed)
    responses = []
    for start in range(0, len(prompts), batch_size):
        texts = [chat_prompt(tokenizer, p) for p in prompts[start:start + batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                          add_special_tokens=False).to(device)
        room = _context_room(model, batch["input_ids"].size(1))
        generator, inputs = _generation_inputs(model, batch)
        out = generator.generate(**inputs, max_new_tokens=min(max_new_tokens, room), do_sample=temperature > 0,
                                 temperature=temperature if temperature > 0 else None,
                                 top_k=top_k if temperature > 0 else None,
                                 eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)
        new_tokens = out[:, out.size(1) - _new_length(out, inputs):]
        responses += [r.strip() for r in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return responses


def _prompt_tuned(model) -> bool:
    """True for a peft model whose adapter is prompt learning (virtual tokens before the input)."""
    config = getattr(model, "active_peft_config", None)  # set on a peft model
    return config is not None and config.is_prompt_learning


def _generation_inputs(model, batch):
    """The model to call ``generate`` on, and its inputs.

    A prompt-tuned model's learned embeddings go in front of the prompt's token embeddings, and
    the base model generates from those ``inputs_embeds``: exactly what the adapter's forward pass
    does in training. peft's own ``generate`` does this by patching transformers' generation
    internals, which transformers 5.24 renamed (every step then re-inserted the virtual tokens
    and the positions ran past the context). The public route here does not depend on them.
    """
    if not _prompt_tuned(model):
        return model, dict(batch)
    embeds = model.get_input_embeddings()(batch["input_ids"])
    virtual = model.get_prompt(batch_size=embeds.size(0)).to(embeds.dtype)
    mask = batch["attention_mask"]
    prefix_mask = torch.ones(mask.size(0), virtual.size(1), dtype=mask.dtype, device=mask.device)
    return model.get_base_model(), {"inputs_embeds": torch.cat([virtual, embeds], dim=1),
                                    "attention_mask": torch.cat([prefix_mask, mask], dim=1)}


def _new_length(out: torch.Tensor, inputs: dict) -> int:
    """How many of ``out``'s columns are new tokens: generating from ``inputs_embeds`` returns
    only the new ones, generating from ``input_ids`` returns the prompt too."""
    if "input_ids" in inputs:
        return out.size(1) - inputs["input_ids"].size(1)
    return out.size(1)


def _context_room(model, prompt_length: int) -> int:
    """How many tokens fit after a prompt: the context, minus the prompt and any virtual tokens."""
    virtual = model.active_peft_config.num_virtual_tokens if _prompt_tuned(model) else 0
    context = models.context_length(model)
    room = context - prompt_length - virtual
    if room < 1:
        raise ValueError(f"A prompt of {prompt_length} tokens leaves no room in a context of "
                         f"{context} tokens; shorten it.")
    return room


@torch.no_grad()
def shakespeare_loss(model, ids: torch.Tensor, block_size: int = 128, batches: int = 20, batch_size: int = 8) -> float:
    """Mean next-token loss of a Hugging Face causal LM on plain corpus windows (fixed windows)."""
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(batches):
        x, y = gpt.get_batch(ids, block_size, batch_size, generator, device)
        logits = model(input_ids=x).logits
        losses.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).item())
    return sum(losses) / len(losses)


def sft_config(profile=None) -> dict:
    """What the ``sft`` artifact depends on: the model it starts from (the base GPT, or the ``--model``
    one: ``models.start_config``), the SFT sizes, the data, the recipe. Every later stage's config
    holds this one, so a different starting model gives different artifacts all the way down."""
    from rlhf_helpers.env import get_profile

    profile = profile or get_profile()
    return {**models.start_config(profile), "sft": asdict(profile.sft), "seed": SFT_SEED,
            "tasks": "instructions.make_tasks('train')", "version": SFT_VERSION}


def _progress_callback(progress):
    """A ``TrainerCallback`` that drives a tqdm bar (the Trainer's own bar is switched off)."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            progress.reset(total=state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            progress.update()

    return Progress()


def train_sft(profile, progress=None, *, sizes=None, peft_config=None):
    """Fine-tune the base model (or the ``--model`` one) on the training demonstrations; return
    (model, tokenizer, logs, seconds).

    ``sizes`` defaults to the profile's SFT sizes; a ``peft_config`` trains an adapter instead of
    every weight (lesson 04), and the model returned is then a peft model. ``peft_config`` may also
    be a function ``(model, tokenizer) -> config``, called on the model once it is loaded, so that
    an adapter finds its places in whatever model that is (``peft_sft.lora_config``).
    """
    from rlhf_helpers.env import seed_everything

    seed_everything(SFT_SEED)
    model, tokenizer = models.load_start_model()
    if callable(peft_config):
        peft_config = peft_config(model, tokenizer)
    with tempfile.TemporaryDirectory() as out:
        trainer = sft_trainer(model, tokenizer, instructions.make_tasks("train"), sizes or profile.sft, out,
                              callbacks=[_progress_callback(progress)] if progress is not None else None,
                              peft_config=peft_config)
        start = time.perf_counter()
        with lora.quiet_peft():
            trainer.train()
        seconds = time.perf_counter() - start
    return trained_model(trainer), tokenizer, trainer.state.log_history, seconds


def _build_sft(folder, progress) -> None:
    from rlhf_helpers.env import get_profile

    model, tokenizer, logs, seconds = train_sft(get_profile(), progress)
    model.save_pretrained(folder / "model")  # safetensors
    tokenizer.save_pretrained(folder / "model")
    (folder / "log_history.json").write_text(json.dumps(logs, indent=1))
    (folder / "figures.json").write_text(json.dumps({"sft_train_seconds": round(seconds, 1)}))


def sft_model_path():
    """The folder of the ``sft`` artifact (fine-tuned in about a minute on a CPU, if missing)."""
    from rlhf_helpers import artifacts

    return artifacts.fetch("sft", sft_config(), _build_sft, made_by="lesson 03 (rlhf_helpers.sft)",
                           together=True)  # trl's Trainer: under a launch, every process trains it


def load_sft_model():
    """The SFT model as ``(model, tokenizer)`` (a ``GPT2LMHeadModel`` unless ``--model`` chose another
    architecture), in eval mode, on the course device."""
    return gpt.load_saved_model(sft_model_path() / "model")


def sft_log_history() -> list[dict]:
    """The Trainer's logged rows (step, loss, learning rate, ...) saved with the ``sft`` artifact."""
    return json.loads((sft_model_path() / "log_history.json").read_text())
