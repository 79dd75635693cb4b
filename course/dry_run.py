"""``python -m course dry-run``: every stage at a profile's shapes, for a handful of steps, on any machine.

A profile's sizes are of two kinds. *Shapes* decide what the code computes on: the GPT's depth,
width, heads and context length, the LoRA rank, the K answers compared per prompt, GRPO's group
size, the answer length, the learning rates. *Amounts* decide only how long it runs: steps, batch
sizes, prompt counts. A mistake of shape (a context longer than the position table, a head count
that does not divide the width, a group that does not fill a batch) shows in a stage's first
steps; a mistake of amount only costs time. So a dry run keeps every shape of the profile, cuts
every amount to a few (``DRY_RUN_SIZES``), and runs the nine stages in order, as
``python -m course run`` does, in an empty artifacts folder of its own, then the runs that only
the notebooks make (``lesson_runs``: lesson 04's rank sweep, lesson 06's over-optimisation). It
keeps the profile's number format too: the ``gpu`` profile's forward passes run in bfloat16 on a
CPU as on a GPU (``env.autocast_dtype``), and trl's trainers get ``bf16=True``. The ``gpu`` profile,
whose real run wants a GPU for hours, dry-runs in about a minute on a 2-core laptop, and
``make test`` does it on every change (``tests/test_dry_run.py``).

Then it checks what it built, and says what it found:

- every saved model has the profile's shape (``model_shape_problems``): a dry run that trained
  smaller models than the profile's would have checked nothing;
- every global batch of the profile splits evenly over 1, 2, 4 and 8 processes
  (``launch_problems``), as ``accelerate launch`` on that many GPUs needs.

What a dry run cannot catch: running out of GPU memory (``python -m course memory`` estimates
it), anything about CUDA itself, and whether the sizes train well. Nothing it trains learns
much; ten steps of SFT are there only so that the untrained model learns to end its answers,
which lesson 05 needs in order to compare them.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Callable

# Amounts only: a tiny number of steps, batches and prompts for every stage.
DRY_RUN_SIZES = (
    "gpt.max_steps=2", "gpt.batch_size=2",
    # ten steps: lesson 05 compares only answers that ended, and an untrained model rarely ends
    # one (after two steps of SFT, 39 of 96 answers did not end in our run; after ten, none)
    "sft.max_steps=10", "sft.batch_size=4",
    "peft.max_steps=2", "peft.sweep_steps=2", "peft.batch_size=4",
    "reward.prompts=12", "reward.max_steps=2", "reward.batch_size=8",
    "ppo.steps=2", "ppo.batch_size=4", "ppo.mini_batch_size=2", "ppo.eval_every=1", "ppo.checkpoint_prompts=4",
    "ppo.overopt_steps=2", "ppo.overopt_eval_every=1",
    "beyond.dpo_steps=2", "beyond.dpo_batch_size=2", "beyond.grpo_steps=2", "beyond.grpo_prompts=2",
    "eval_prompts=8",
)
LAUNCH_SIZES = (1, 2, 4, 8)  # numbers of processes (GPUs) the profile's batches must split over
# What the notebooks train beyond the nine stages, at shapes of their own (the rank sweep's ranks,
# prompt tuning's virtual tokens, the over-optimisation runs' betas): artifact -> (what, builder).
def lesson_runs() -> dict:
    from rlhf_helpers import peft_sft, rlhf

    return {"peft_comparison": ("lesson 04's LoRA ranks, IA3 and prompt tuning", peft_sft.peft_comparison_path),
            "ppo_overoptimisation": ("lesson 06's over-optimisation runs", rlhf.overoptimisation_path)}


TRAINED_MODELS = ("base", "sft", "reward_model", "ppo", "dpo", "grpo", "grpo_rule")  # folders with model/


def global_batches(profile) -> dict[str, int]:
    """Every batch a launch splits across its processes (``distributed.per_process``), by name."""
    return {
        "gpt.batch_size": profile.gpt.batch_size,
        "sft.batch_size": profile.sft.batch_size,
        "peft.batch_size": profile.peft.batch_size,
        "reward.batch_size": profile.reward.batch_size,
        "ppo.batch_size": profile.ppo.batch_size,
        "ppo.mini_batch_size": profile.ppo.mini_batch_size,
        "beyond.dpo_batch_size": profile.beyond.dpo_batch_size,
        "beyond.grpo_prompts x grpo_generations": profile.beyond.grpo_prompts * profile.beyond.grpo_generations,
    }


def launch_problems(profile, processes=LAUNCH_SIZES) -> list[str]:
    """The batches of ``profile`` that some number of ``processes`` cannot split evenly."""
    return [f"{name} = {size} does not split over {n} processes"
            for name, size in global_batches(profile).items() for n in processes if size % n]


def model_shape_problems(artifacts: Path, profile) -> list[str]:
    """How the models saved under ``artifacts`` differ from ``profile``'s shapes (none: they match).

    Every trained model (``TRAINED_MODELS``) must have the profile's depth, width, heads and
    context length, and the LoRA adapter the profile's rank; a stage with no model saved is a
    problem too.
    """
    from transformers import AutoConfig

    gpt = profile.gpt
    want = {"num_hidden_layers": gpt.n_layer, "hidden_size": gpt.n_embd, "num_attention_heads": gpt.n_head,
            "max_position_embeddings": gpt.block_size}
    problems = []
    for stage in TRAINED_MODELS:
        configs = sorted(artifacts.glob(f"{stage}/*/model/config.json"))
        if not configs:
            problems.append(f"{stage}: no model saved")
        for config_file in configs:
            config = AutoConfig.from_pretrained(config_file.parent)
            problems += [f"{stage}: {name} is {getattr(config, name)}, the profile's is {value}"
                         for name, value in want.items() if getattr(config, name) != value]
    adapters = sorted(artifacts.glob("sft_lora/*/adapter/adapter_config.json"))
    if not adapters:
        problems.append("sft_lora: no adapter saved")
    for adapter in adapters:
        rank = json.loads(adapter.read_text())["r"]
        if rank != profile.peft.r:
            problems.append(f"sft_lora: LoRA rank {rank}, the profile's is {profile.peft.r}")
    return problems


@contextlib.contextmanager
def _environment(**values: str):
    """Set environment variables for the block, then put back what was there (``run`` sets some too)."""
    names = set(values) | {"RLHF_PROFILE", "RLHF_SIZES"}
    before = {name: os.environ.get(name) for name in names}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def dry_run(profile: str = "gpu", sizes: list[str] = (), folder: Path | None = None) -> list[str]:
    """Run every stage of ``profile`` at its shapes with ``DRY_RUN_SIZES``; return the problems found.

    ``sizes`` are overrides applied after ``DRY_RUN_SIZES`` (``["gpt.n_layer=12"]``: try a shape
    before paying for it); ``$RLHF_SIZES`` is replaced while it runs. ``folder`` holds the artifacts and must be
    empty or absent; by default a temporary folder, removed afterwards. A stage that fails stops
    the dry run: its traceback is printed, and its error is the problem returned (with any batch
    that would not split).
    """
    from rlhf_helpers.artifacts import ARTIFACTS_VAR
    from rlhf_helpers.env import AUTOCAST_ANY_DEVICE_VAR, PROFILES, SIZES_VAR, get_profile, with_sizes
    from rlhf_helpers.models import MODEL_VAR

    name = get_profile(profile).name  # fails here on an unknown profile
    real = with_sizes(PROFILES[name], ",".join(sizes))  # what a real run of these shapes would train
    if folder is not None and folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"{folder} is not empty: a dry run builds every stage from nothing. "
                         "Name an empty or new folder, or leave --artifacts out for a temporary one.")
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rlhf-dry-run-")))
        # the course's own models: a dry run checks the profile's shapes, not another model's
        every_size = ",".join([*DRY_RUN_SIZES, *sizes])
        stack.enter_context(_environment(**{ARTIFACTS_VAR: str(folder.resolve()), MODEL_VAR: "",
                                            AUTOCAST_ANY_DEVICE_VAR: "1", SIZES_VAR: every_size}))
        print(f"Dry run of the {name} profile: its shapes, a handful of steps, every stage (artifacts in "
              f"{folder}; sizes {every_size.replace(',', ', ')}).", flush=True)
        seconds, failure = {}, None
        for artifact, build in _steps(name):
            start = time.perf_counter()
            try:
                build()
            except Exception as error:  # its traceback now; its name in the summary
                traceback.print_exc()
                failure = f"{artifact} failed: {type(error).__name__}: {error}"
                break
            finally:
                seconds[artifact] = time.perf_counter() - start
        problems = [failure] if failure else model_shape_problems(folder, real)
    problems += launch_problems(real)
    print(summary(real, seconds, problems), flush=True)
    return problems


def _steps(profile: str) -> list[tuple[str, Callable[[], object]]]:
    """(artifact, build it) for the nine stages in pipeline order, then the notebooks' own runs; the
    sizes come from ``$RLHF_SIZES``."""
    from course.run import STAGES, run

    def lesson_run(artifact: str, description: str, build: Callable[[], object]):
        print(f"{artifact}: {description}; profile {profile}", flush=True)
        return build()

    return ([(stage, partial(run, stage, profile=profile)) for stage in STAGES]
            + [(artifact, partial(lesson_run, artifact, *run_)) for artifact, run_ in lesson_runs().items()])


def summary(profile, seconds: dict[str, float], problems: list[str]) -> str:
    """What the dry run did and found, for the terminal."""
    gpt = profile.gpt
    lines = [f"Dry run of the {profile.name} profile: " + ", ".join(f"{s} {t:.0f} s" for s, t in seconds.items())
             + f" ({sum(seconds.values()):.0f} s in all)."]
    if problems:
        lines += [f"{len(problems)} problem(s):"] + [f"  ✗ {p}" for p in problems]
    else:
        lines.append(f"✓ every model has the profile's shape ({gpt.n_layer} layers, width {gpt.n_embd}, "
                     f"{gpt.n_head} heads, context {gpt.block_size}; LoRA rank {profile.peft.r}), and every "
                     f"global batch splits evenly over {', '.join(map(str, LAUNCH_SIZES))} processes.")
    return "\n".join(lines)
