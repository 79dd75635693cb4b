"""``python -m course run <stage>``: every stage of the course as a headless recipe.

The notebooks teach; these recipes only run. Each stage is the reference code of the lesson that
teaches it, reached through the artifact cache, so a recipe writes exactly the artifact the
notebooks load, and builds whatever earlier stage is missing first (``run ppo`` on an empty
machine builds the tokenizer, the base model, SFT, the comparisons and the reward model, then PPO).
Interrupted? Run the same command again: every finished stage is kept, and the run resumes at the
first stage that is missing.

Sizes come from the profile (``--profile``) with overrides (``--set ppo.steps=40``), which travel
in ``$RLHF_PROFILE`` and ``$RLHF_SIZES`` so that every stage sees them; changed sizes build new
artifacts beside the default ones.

``--model PATH_OR_ID`` starts SFT, and so every stage after it, from another causal LM instead of
the base GPT (``rlhf_helpers.models``): a folder saved with ``save_pretrained``, or a hub id with
``RLHF_ALLOW_HUB=1``. It travels in ``$RLHF_MODEL``, and its identity goes into every later
artifact's key, so its artifacts sit beside the default ones too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable


def _stages() -> dict[str, tuple[str, Callable[[], Path]]]:
    """Stage name -> (what it is, the function that returns its artifact folder, building it if missing)."""
    from rlhf_helpers import arena, beyond_ppo, gpt, peft_sft, reward, rlhf, sft, tokenizers

    return {
        "tokenizer": ("the course's byte-level BPE (lesson 01)", tokenizers.course_tokenizer_path),
        "base": ("the GPT pretrained on Shakespeare (lesson 02)", gpt.base_model_path),
        "sft": ("supervised fine-tuning on demonstrations (lesson 03)", sft.sft_model_path),
        "sft_lora": ("the same with a LoRA adapter (lesson 04)", peft_sft.sft_lora_path),
        "reward": ("the reward model from comparisons (lesson 05)", reward.reward_model_path),
        "ppo": ("RLHF with PPO against the reward model (lesson 06)", rlhf.ppo_path),
        "dpo": ("DPO on the same comparisons (lesson 07)", beyond_ppo.dpo_path),
        "grpo": ("GRPO with the reward model (lesson 07)", beyond_ppo.grpo_path),
        "arena": ("every model judged side by side (lesson 07)", arena.arena_path),
    }


STAGES = ("tokenizer", "base", "sft", "sft_lora", "reward", "ppo", "dpo", "grpo", "arena")
BEFORE_SFT = ("tokenizer", "base")  # the stages a --model replaces, so cannot take one


def run(stage: str, *, profile: str | None = None, sizes: list[str] = (), model: str | None = None) -> Path:
    """Build (or find) ``stage``'s artifact with these sizes, from this model; return its folder."""
    if stage not in STAGES:
        raise SystemExit(f"Unknown stage {stage!r}. Stages, in pipeline order: {', '.join(STAGES)}.")
    if profile:
        os.environ["RLHF_PROFILE"] = profile
    if sizes:
        os.environ["RLHF_SIZES"] = ",".join(sizes)
    from rlhf_helpers import models
    from rlhf_helpers.distributed import is_main_process
    from rlhf_helpers.env import CourseConfigError, get_profile

    if model:
        if stage in BEFORE_SFT:
            raise CourseConfigError(f"--model replaces the course's tokenizer and base GPT as the start of SFT: "
                                    f"use it with the stages after them ({', '.join(STAGES[2:])}), not {stage}.")
        os.environ[models.MODEL_VAR] = models.resolve(model)  # a folder as an absolute path, for every stage
    chosen = get_profile()  # fails here, before any work, on a bad profile or override
    source = models.chosen_model() if stage not in BEFORE_SFT else None
    if source:
        models.model_identity(source)  # fails here too, on a hub id while offline
    description, build = _stages()[stage]
    main = is_main_process()  # under `accelerate launch`, one process speaks for all
    if main:
        print(f"{stage}: {description}; profile {chosen.name}" + (f" with {', '.join(sizes)}" if sizes else "")
              + (f"; starting from {source}" if source else ""), flush=True)
    start = time.perf_counter()
    folder = build()
    if main:
        print(f"{stage} ready in {folder} ({time.perf_counter() - start:.0f} s; stages built earlier are reused).")
    return folder
