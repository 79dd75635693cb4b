"""`python -m course dry-run`: every stage at the gpu profile's shapes, a handful of steps, on this CPU."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from course.dry_run import DRY_RUN_SIZES, TRAINED_MODELS, launch_problems, model_shape_problems
from course.manifest import ROOT
from rlhf_helpers.env import PROFILES, with_sizes

GPU = PROFILES["gpu"]

# What a real run computes on, written out here rather than taken from course.dry_run: the dry run
# may cut steps, batches and prompt counts, and must leave every one of these as the profile has it.
SHAPES = {
    "gpt": ("n_layer", "n_head", "n_embd", "block_size", "lr", "muon_lr"),
    "sft": ("lr",),
    "peft": ("lr", "r", "alpha", "ranks", "virtual_tokens"),
    "reward": ("responses_per_prompt", "lr"),
    "ppo": ("ppo_epochs", "lr", "kl_coef", "max_new_tokens", "overopt_betas", "overopt_lr"),
    "beyond": ("dpo_lr", "dpo_beta", "grpo_generations", "grpo_lr", "grpo_beta", "max_new_tokens"),
}


def dry_run_cli(*args, artifacts):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for name in ("RLHF_SIZES", "RLHF_PROFILE", "RLHF_MODEL", "RLHF_AUTOCAST_ANY_DEVICE"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "course", "dry-run", "--artifacts", str(artifacts), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


def test_the_gpu_profile_dry_runs_every_stage_at_its_shapes(tmp_path):
    """The whole pipeline at the gpu profile's shapes (about 80 seconds here), then its models checked
    again from outside: each has the gpu profile's depth, width, heads and context, not the cpu's."""
    artifacts = tmp_path / "dry"
    run = dry_run_cli(artifacts=artifacts)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "✓ every model has the profile's shape (8 layers, width 512, 8 heads, context 256" in run.stdout
    for stage in ("tokenizer", "sft_lora", "comparisons", "arena", "peft_comparison", "ppo_overoptimisation",
                  *TRAINED_MODELS):
        assert len(list((artifacts / stage).iterdir())) == 1, stage
    assert model_shape_problems(artifacts, GPU) == []
    assert model_shape_problems(artifacts, PROFILES["cpu"]), "the cpu profile's shapes are not what it built"


def test_a_context_too_short_for_prompt_and_answer_fails_the_dry_run_and_names_the_stage(tmp_path):
    """The control: a context of 40 tokens cannot hold a prompt and lesson 05's 32-token answers."""
    run = dry_run_cli("--profile", "cpu", "--set", "gpt.block_size=40", artifacts=tmp_path / "dry")
    assert run.returncode == 1 and "IndexError" in run.stderr  # the traceback
    assert "1 problem(s):\n  ✗ reward failed: IndexError: index out of range in self" in run.stdout
    assert "every model has the profile's shape" not in run.stdout


def test_a_dry_run_from_another_model_checks_that_models_shape(tmp_path):
    """``--model``: a tiny Llama (2 layers, width 32) instead of the base GPT, with the gpu profile's bf16.

    This run found that trl's trainers leave a bf16 autocast wrapper on the models they train: the
    reward model's normalisation statistics came out in bfloat16, with a spread of exactly 0, and
    PPO's rewards were infinite (``sft.trained_model`` now takes the wrapper off)."""
    from rlhf_helpers import tokenizers
    from tests.test_any_model import save_tiny_model

    folder = save_tiny_model("llama", tokenizers.course_tokenizer(), tmp_path / "tiny-llama")
    artifacts = tmp_path / "dry"
    run = dry_run_cli("--model", str(folder), artifacts=artifacts)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert ("✓ every model has the starting model's shape (2 layers, width 32, 4 heads, context 256; LoRA rank 16)"
            in run.stdout)
    assert not (artifacts / "base").exists() and model_shape_problems(artifacts, GPU, str(folder)) == []
    assert "ppo: num_hidden_layers is 2, the profile's is 8" in model_shape_problems(artifacts, GPU)


def test_the_dry_run_sizes_cut_amounts_and_keep_every_shape():
    dry = with_sizes(GPU, ",".join(DRY_RUN_SIZES))
    for section, names in SHAPES.items():
        for name in names:
            assert getattr(getattr(dry, section), name) == getattr(getattr(GPU, section), name), f"{section}.{name}"
    assert dry.autocast == GPU.autocast == "bf16"
    for size in DRY_RUN_SIZES:  # and every amount only shrinks
        target, value = size.split("=")
        section, _, name = target.partition(".")
        full = getattr(getattr(GPU, section), name) if name else getattr(GPU, section)
        assert int(value) < full, size


def save_models(folder, gpt, rank):
    """A fake artifacts folder: one config per trained stage with these GPT sizes, and a LoRA rank."""
    from transformers import GPT2Config

    for stage in TRAINED_MODELS:
        GPT2Config(n_layer=gpt.n_layer, n_head=gpt.n_head, n_embd=gpt.n_embd,
                   n_positions=gpt.block_size).save_pretrained(folder / stage / "key" / "model")
    (folder / "sft_lora" / "key" / "adapter").mkdir(parents=True)
    (folder / "sft_lora" / "key" / "adapter" / "adapter_config.json").write_text(json.dumps({"r": rank}))


def test_the_shape_check_names_a_model_smaller_than_the_profile(tmp_path):
    save_models(tmp_path, GPU.gpt, GPU.peft.r)
    assert model_shape_problems(tmp_path, GPU) == []
    deeper = replace(GPU, gpt=replace(GPU.gpt, n_layer=GPU.gpt.n_layer + 1, block_size=512),
                      peft=replace(GPU.peft, r=4))
    problems = model_shape_problems(tmp_path, deeper)
    assert "ppo: num_hidden_layers is 8, the profile's is 9" in problems
    assert "base: max_position_embeddings is 256, the profile's is 512" in problems
    assert "sft_lora: LoRA rank 16, the profile's is 4" in problems
    assert model_shape_problems(tmp_path / "empty", GPU) == [f"{s}: no model saved" for s in TRAINED_MODELS] + [
        "sft_lora: no adapter saved"]


def test_every_global_batch_of_both_profiles_splits_over_1_2_4_and_8_gpus():
    assert launch_problems(GPU) == [] and launch_problems(PROFILES["cpu"]) == []
    uneven = with_sizes(GPU, "ppo.batch_size=12,beyond.dpo_batch_size=6")
    assert launch_problems(uneven) == ["ppo.batch_size = 12 does not split over 8 processes",
                                       "beyond.dpo_batch_size = 6 does not split over 4 processes",
                                       "beyond.dpo_batch_size = 6 does not split over 8 processes"]


def test_a_dry_run_refuses_a_folder_with_artifacts_in_it(tmp_path):
    (tmp_path / "base").mkdir()
    run = dry_run_cli(artifacts=tmp_path)
    assert run.returncode != 0 and "is not empty: a dry run builds every stage from nothing" in run.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "base"]
