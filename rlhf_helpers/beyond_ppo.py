"""Beyond PPO (lesson 07): DPO and GRPO with trl, from the SFT model.

PPO (lesson 06) needs four models in memory (policy, reference, reward model, value model) and a
hand-written loop. Two newer recipes drop parts of that machinery:

- **DPO** (Rafailov et al., 2023) drops the reward model *and* the sampling. Its loss on one
  comparison is ``-log sigmoid(beta * [(log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r))])``:
  the Bradley-Terry loss of lesson 05 with the policy's log-ratio to the reference in place of a
  reward. trl's ``DPOTrainer`` trains it on lesson 05's comparisons (the ``dpo`` artifact).
- **GRPO** (Shao et al., 2024) keeps sampling but drops the value model: it answers each prompt G
  times and uses each answer's reward relative to its group, ``(r - mean) / std``, as the
  advantage. trl's ``GRPOTrainer`` runs it twice here: with lesson 05's reward model as the reward
  (the ``grpo`` artifact), and with a *verifiable* rule, "does the answer follow the instruction"
  (``instructions.follows``), as in reinforcement learning with verifiable rewards (``grpo_rule``).

The reward model is asked through ``reward.score``, which renders the conversation with the chat
template exactly as it was trained, and normalised with the mean and spread it measured on SFT
answers, as in lesson 06; an answer cut off by the token limit gets the fixed penalty lesson 06
gives it (the reward model cannot see that it was cut off).

GRPO is configured as Shao et al. describe it (``grpo_trainer_config``): the per-answer clipped
objective (``loss_type="grpo"``), group-scaled rewards, and two updates per batch of answers, so that
the ratio moves away from 1 and the clip has something to do.

Left out: IPO and the other DPO variants trl offers, several DPO epochs, vLLM generation, trl's other
GRPO losses (DAPO, Dr. GRPO, ...), and any tuning beyond what a CPU affords.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from rlhf_helpers import gpt, instructions, reward, sft
from rlhf_helpers.ppo import special_ids

BEYOND_VERSION = 2  # bump when the recipe changes, so cached models are rebuilt
DPO_SEED = 0
GRPO_SEED = 0
UNENDED_SCORE = -1.0  # normalised reward of an answer cut off by the token limit (lesson 06's penalty)
GRPO_REWARDS = ("model", "rule")  # the learned reward, or the verifiable rule

# trl 1.16 asks transformers a deprecated question in every DPO loss; the warning says nothing to a learner
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated", category=FutureWarning)


# --------------------------------------------------------------------------------------------
# DPO
# --------------------------------------------------------------------------------------------

def dpo_trainer_config(sizes, output_dir: str, **overrides):
    """A ``DPOConfig``: the standard sigmoid loss, no label smoothing, the reference computed on the fly."""
    from trl import DPOConfig

    settings = dict(**sft.trainer_settings(output_dir, sizes.dpo_steps, sizes.dpo_batch_size, sizes.dpo_lr, DPO_SEED),
                    beta=sizes.dpo_beta, loss_type=["sigmoid"], label_smoothing=0.0, max_length=128,
                    precompute_ref_log_probs=False)
    return DPOConfig(**{**settings, **overrides})


def dpo_trainer(model, ref_model, tokenizer, comparisons, sizes, output_dir: str, callbacks=None, **overrides):
    """trl's ``DPOTrainer`` on ``comparisons`` (lesson 05's), printing nothing.

    ``ref_model`` is a frozen copy of the SFT model. Building the trainer tokenizes each pair:
    ``trainer.train_dataset`` holds ``prompt_ids``, ``chosen_ids`` and ``rejected_ids``, and
    ``trainer.data_collator`` stacks a batch as the chosen rows, then the rejected rows, with a
    ``completion_mask`` that is 1 on the answer's tokens only.
    """
    from rlhf_helpers import preferences
    from trl import DPOTrainer

    config = dpo_trainer_config(sizes, output_dir, **overrides)
    with sft.quiet_datasets():
        trainer = DPOTrainer(model=model, ref_model=ref_model, args=config,
                             train_dataset=preferences.to_preference_dataset(comparisons),
                             processing_class=tokenizer, callbacks=callbacks)
    return sft.quiet_trainer(trainer)


def completion_logps(model, batch: dict) -> torch.Tensor:
    """The summed log-probability of each row's completion tokens, from a DPO collator's batch.

    What DPO calls ``log pi(y|x)``: the model reads prompt + answer, and the log-probabilities of
    the answer's tokens (``completion_mask`` 1) are added up.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["input_ids"][:, 1:]
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logps * batch["completion_mask"][:, 1:]).sum(1)


def train_dpo(sizes, progress=None):
    """DPO from the SFT model on lesson 05's training comparisons; return (model, tokenizer, logs, seconds)."""
    from rlhf_helpers.env import seed_everything

    seed_everything(DPO_SEED)
    model, tokenizer = sft.load_sft_model()
    ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    train, _ = reward.load_comparisons()
    with tempfile.TemporaryDirectory() as out:
        trainer = dpo_trainer(model, ref_model, tokenizer, train, sizes, out,
                              callbacks=[sft._progress_callback(progress)] if progress is not None else None)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return sft.trained_model(trainer), tokenizer, trainer.state.log_history, seconds


def beyond_config(profile=None) -> dict:
    """What the ``dpo`` and ``grpo`` artifacts depend on: the SFT and reward models, the sizes."""
    from rlhf_helpers.env import get_profile

    profile = profile or get_profile()
    return {"sft": sft.sft_config(profile), "reward": reward.reward_config(profile),
            "beyond": asdict(profile.beyond), "version": BEYOND_VERSION}


def _save(folder: Path, model, tokenizer, logs: list[dict], figures: dict) -> None:
    model.save_pretrained(folder / "model")  # safetensors
    tokenizer.save_pretrained(folder / "model")
    (folder / "log_history.json").write_text(json.dumps(logs, indent=1))
    (folder / "figures.json").write_text(json.dumps(figures, indent=1))


def _build_dpo(folder: Path, progress) -> None:
    from rlhf_helpers.env import get_profile

    model, tokenizer, logs, seconds = train_dpo(get_profile().beyond, progress)
    _save(folder, model, tokenizer, logs, {"train_seconds": round(seconds, 1)})


def dpo_path() -> Path:
    """The folder of the ``dpo`` artifact (trained in well under a minute on a CPU, if missing)."""
    from rlhf_helpers import artifacts

    return artifacts.fetch("dpo", {**beyond_config(), "stage": "dpo", "seed": DPO_SEED}, _build_dpo,
                           made_by="lesson 07 (rlhf_helpers.beyond_ppo)", together=True)


def load_dpo_model():
    """The DPO policy as ``(model, tokenizer)`` (a ``GPT2LMHeadModel`` unless ``--model`` chose another
    architecture), in eval mode, on the course device."""
    return gpt.load_saved_model(dpo_path() / "model")


# --------------------------------------------------------------------------------------------
# GRPO
# --------------------------------------------------------------------------------------------

def _texts(completions) -> list[str]:
    """trl passes conversational completions as ``[{"role": "assistant", "content": ...}]``."""
    return [(c[0]["content"] if isinstance(c, list) else c).strip() for c in completions]


def _prompt_texts(prompts) -> list[str]:
    return [p[-1]["content"] if isinstance(p, list) else p for p in prompts]


def model_reward(reward_model, reward_tokenizer, stats, end_id: int):
    """A GRPO reward function: lesson 05's reward model, normalised as lesson 06 normalises it.

    ``f(prompts, completions, completion_ids, **kwargs) -> list[float]``; an answer whose tokens
    hold no ``<|im_end|>`` was cut off and scores ``UNENDED_SCORE``.
    """
    mean, std = float(stats[0]), float(stats[1])

    def reward_model_score(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        raw = reward.score(reward_model, reward_tokenizer, _prompt_texts(prompts), _texts(completions))
        scores = ((raw - mean) / std).tolist()
        if completion_ids is not None:
            scores = [s if end_id in ids else UNENDED_SCORE for s, ids in zip(scores, completion_ids)]
        return scores

    return reward_model_score


def rule_reward(prompts, completions, **kwargs) -> list[float]:
    """A verifiable reward: 1.0 if the answer follows its instruction (``instructions.follows``), else 0.0."""
    return [float(instructions.follows(p, r)) for p, r in zip(_prompt_texts(prompts), _texts(completions))]


def grpo_dataset(prompts: list[str]):
    """Prompts as a conversational ``datasets.Dataset``: GRPO needs prompts only, it samples the answers."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])


GRPO_ITERATIONS = 2  # updates per batch of answers (Shao et al.'s mu): with 1 the ratio is always 1 and the clip idle


def grpo_trainer_config(sizes, output_dir: str, **overrides):
    """A ``GRPOConfig`` for Shao et al.'s objective, named rather than left to trl's defaults.

    ``grpo_prompts`` prompts x ``grpo_generations`` answers per step, sampled at temperature 1
    without vLLM. The loss is ``loss_type="grpo"``: PPO's clipped ratio times each answer's group
    advantage (rewards scaled by their group's std, ``scale_rewards="group"``), averaged over an
    answer's tokens, then over answers, plus ``beta`` x KL to the SFT model. trl 1.16's default is
    ``"dapo"`` (averaged over every token of the batch instead), and its default single iteration
    per batch would leave the ratio at exactly 1: each batch is used ``GRPO_ITERATIONS`` times so
    the clip acts.
    """
    from trl import GRPOConfig

    batch = sizes.grpo_prompts * sizes.grpo_generations
    settings = dict(**sft.trainer_settings(output_dir, sizes.grpo_steps, batch, sizes.grpo_lr, GRPO_SEED),
                    num_generations=sizes.grpo_generations, max_completion_length=sizes.max_new_tokens,
                    temperature=1.0, beta=sizes.grpo_beta, use_vllm=False, log_completions=False,
                    loss_type="grpo", scale_rewards="group", num_iterations=GRPO_ITERATIONS, epsilon=0.2)
    return GRPOConfig(**{**settings, **overrides})


def grpo_trainer(model, tokenizer, reward_funcs, prompts: list[str], sizes, output_dir: str, callbacks=None,
                 **overrides):
    """trl's ``GRPOTrainer`` on ``prompts``, printing nothing.

    Generation stops at the end of an answer (``<|im_end|>`` in the course's template,
    ``ppo.special_ids``) as well as at the end-of-text token (set on the model's generation config:
    trl stops at what it lists).
    """
    from trl import GRPOTrainer

    end_id, _ = special_ids(tokenizer)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    config = grpo_trainer_config(sizes, output_dir, **overrides)
    with sft.quiet_datasets():
        trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=config, train_dataset=grpo_dataset(prompts),
                              processing_class=tokenizer, callbacks=callbacks)
    return sft.quiet_trainer(trainer)


def train_grpo(sizes, reward_name: str = "model", progress=None):
    """GRPO from the SFT model on the training prompts, with the reward model (``"model"``) or the
    verifiable rule (``"rule"``); return (model, tokenizer, logs, seconds)."""
    from rlhf_helpers import rlhf
    from rlhf_helpers.env import seed_everything

    if reward_name not in GRPO_REWARDS:
        raise ValueError(f"reward_name must be one of {GRPO_REWARDS}, got {reward_name!r}.")
    seed_everything(GRPO_SEED)
    model, tokenizer = sft.load_sft_model()
    saved_eos = model.generation_config.eos_token_id
    if reward_name == "model":
        reward_model, reward_tokenizer, stats = reward.load_reward_model()
        funcs = [model_reward(reward_model, reward_tokenizer, stats, special_ids(tokenizer)[0])]
    else:
        funcs = [rule_reward]
    with tempfile.TemporaryDirectory() as out:
        trainer = grpo_trainer(model, tokenizer, funcs, rlhf.training_prompts(), sizes, out,
                               callbacks=[sft._progress_callback(progress)] if progress is not None else None)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    model = sft.trained_model(trainer)
    model.generation_config.eos_token_id = saved_eos  # as the SFT model saved it
    return model, tokenizer, trainer.state.log_history, seconds


def _build_grpo(reward_name: str):
    def build(folder: Path, progress) -> None:
        from rlhf_helpers.env import get_profile

        model, tokenizer, logs, seconds = train_grpo(get_profile().beyond, reward_name, progress)
        _save(folder, model, tokenizer, logs, {"train_seconds": round(seconds, 1), "reward": reward_name})

    return build


def grpo_path(reward_name: str = "model") -> Path:
    """The folder of the ``grpo`` artifact (reward model) or the ``grpo_rule`` one (verifiable rule)."""
    from rlhf_helpers import artifacts

    stage = "grpo" if reward_name == "model" else "grpo_rule"
    if reward_name not in GRPO_REWARDS:
        raise ValueError(f"reward_name must be one of {GRPO_REWARDS}, got {reward_name!r}.")
    return artifacts.fetch(stage, {**beyond_config(), "stage": stage, "seed": GRPO_SEED}, _build_grpo(reward_name),
                           made_by="lesson 07 (rlhf_helpers.beyond_ppo)", together=True)


def load_grpo_model(reward_name: str = "model"):
    """A GRPO policy as ``(model, tokenizer)`` (a ``GPT2LMHeadModel`` unless ``--model`` chose another
    architecture), in eval mode, on the course device."""
    return gpt.load_saved_model(grpo_path(reward_name) / "model")


def log_history(folder: Path) -> list[dict]:
    """The Trainer's logged rows saved with a ``dpo`` or ``grpo`` artifact."""
    return json.loads((folder / "log_history.json").read_text())


def figures(folder: Path) -> dict:
    """Training seconds (and the reward, for GRPO) saved with a ``dpo`` or ``grpo`` artifact."""
    return json.loads((folder / "figures.json").read_text())
