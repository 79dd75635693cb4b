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
whose real run wants a GPU for hours, dry-runs in about 80 seconds on a 2-core laptop, and
``make test`` does it on every change (``tests/test_dry_run.py``).

``--model`` dry-runs another starting model the same way (SFT, and every stage after it, starts
from that model, as with ``python -m course run --model``), before a GPU is rented for it.

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
def lesson_runs() -> dict:
    """What the notebooks train beyond the nine stages, at shapes of their own (the rank sweep's
    ranks, prompt tuning's virtual tokens, the over-optimisation runs' betas): artifact -> (what,
    the function that builds it)."""
    from rlhf_helpers import peft_sft, rlhf

    return {"peft_comparison": ("lesson 04's LoRA ranks, IA3 and prompt tuning", peft_sft.peft_comparison_path),
            "ppo_overoptimisation": ("lesson 06's over-optimisation runs", rlhf.overoptimisation_path)}


SHAPE_NAMES = ("num_hidden_layers", "hidden_size", "num_attention_heads", "max_position_embeddings")
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


def expected_shape(profile, model: str | None = None) -> dict[str, int]:
    """The depth, width, heads and context every trained model should have, in transformers' names:
    the profile's GPT's, or, when SFT starts from ``model``, that model's own."""
    if model:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model)
        return {name: getattr(config, name, None) for name in SHAPE_NAMES}
    gpt = profile.gpt
    return dict(zip(SHAPE_NAMES, (gpt.n_layer, gpt.n_embd, gpt.n_head, gpt.block_size)))


def model_shape_problems(artifacts: Path, profile, model: str | None = None) -> list[str]:
    """How the models saved under ``artifacts`` differ from the shapes they should have (none: they match).

    Every trained model (``TRAINED_MODELS``; not the base GPT when SFT starts from ``model``) must
    have the ``expected_shape``, and the LoRA adapter the profile's rank; a stage with no model
    saved is a problem too.
    """
    from transformers import AutoConfig

    want, whose = expected_shape(profile, model), "the starting model's" if model else "the profile's"
    problems = []
    for stage in [s for s in TRAINED_MODELS if not (model and s == "base")]:
        configs = sorted(artifacts.glob(f"{stage}/*/model/config.json"))
        if not configs:
            problems.append(f"{stage}: no model saved")
        for config_file in configs:
            config = AutoConfig.from_pretrained(config_file.parent)
            problems += [f"{stage}: {name} is {getattr(config, name, None)}, {whose} is {value}"
                         for name, value in want.items() if getattr(config, name, None) != value]
    adapters = sorted(artifacts.glob("sft_lora/*/adapter/adapter_config.json"))
    if not adapters:
        problems.append("sft_lora: no adapter saved")
    for adapter in adapters:
        rank = json.loads(adapter.read_text())["r"]
        if rank != profile.peft.r:
            problems.append(f"sft_lora: LoRA rank {rank}, the profile's is {profile.peft.r}")
    return problems


def dry_run(profile: str = "gpu", sizes: list[str] = (), folder: Path | None = None,
            model: str | None = None) -> list[str]:
    """Run every stage of ``profile`` at its shapes with ``DRY_RUN_SIZES``; return the problems found.

    ``sizes`` are overrides applied after ``DRY_RUN_SIZES`` (``["gpt.n_layer=12"]``: try a shape
    before paying for it); ``$RLHF_SIZES`` is replaced while it runs. ``model`` (a folder, or a hub
    id with ``RLHF_ALLOW_HUB=1``) starts SFT instead of the base GPT, as ``run --model`` does: the
    base stage is left out, and the models must have that model's shape. ``folder`` holds the
    artifacts and must be empty or absent; by default a temporary folder, removed afterwards. A
    stage that fails stops the dry run: its traceback is printed, and its error is the problem
    returned (with any batch that would not split).
    """
    from course.environment import environment_variables
    from rlhf_helpers import models
    from rlhf_helpers.artifacts import ARTIFACTS_VAR
    from rlhf_helpers.env import AUTOCAST_ANY_DEVICE_VAR, PROFILES, SIZES_VAR, get_profile, with_sizes

    name = get_profile(profile).name  # fails here on an unknown profile
    real = with_sizes(PROFILES[name], ",".join(sizes))  # what a real run of these shapes would train
    source = models.resolve(model) if model else ""  # fails here on a hub id unless the hub is allowed
    if source:
        models.model_identity(source)
    if folder is not None and folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"{folder} is not empty: a dry run builds every stage from nothing. "
                         "Name an empty or new folder, or leave --artifacts out for a temporary one.")
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rlhf-dry-run-")))
        every_size = ",".join([*DRY_RUN_SIZES, *sizes])
        # no $RLHF_MODEL of the learner's: the course's base GPT unless ``model`` says otherwise
        # everything set here or by the stages (``run`` sets $RLHF_PROFILE) is undone at the end
        stack.enter_context(environment_variables({ARTIFACTS_VAR: str(folder.resolve()), models.MODEL_VAR: source,
                                                   AUTOCAST_ANY_DEVICE_VAR: "1", SIZES_VAR: every_size}))
        print(f"Dry run of the {name} profile: its shapes, a handful of steps, every stage"
              + (f" from {source}" if source else "")
              + f" (artifacts in {folder}; sizes {every_size.replace(',', ', ')}).", flush=True)
        seconds, failure = {}, None
        for artifact, build in _steps(name, skip=("base",) if source else ()):
            start = time.perf_counter()
            try:
                build()
            except Exception as error:  # its traceback now; its name in the summary
                traceback.print_exc()
                failure = f"{artifact} failed: {type(error).__name__}: {error}"
                break
            finally:
                seconds[artifact] = time.perf_counter() - start
        problems = [failure] if failure else model_shape_problems(folder, real, source)
    problems += launch_problems(real)
    print(summary(real, seconds, problems, source), flush=True)
    return problems


def _steps(profile: str, skip: tuple[str, ...] = ()) -> list[tuple[str, Callable[[], object]]]:
    """(artifact, build it) for the nine stages in pipeline order but ``skip``, then the notebooks' own
    runs; the sizes and the starting model come from ``$RLHF_SIZES`` and ``$RLHF_MODEL``."""
    from course.run import STAGES, run

    def lesson_run(artifact: str, description: str, build: Callable[[], object]):
        print(f"{artifact}: {description}; profile {profile}", flush=True)
        return build()

    return ([(stage, partial(run, stage, profile=profile)) for stage in STAGES if stage not in skip]
            + [(artifact, partial(lesson_run, artifact, *run_)) for artifact, run_ in lesson_runs().items()])


def summary(profile, seconds: dict[str, float], problems: list[str], model: str | None = None) -> str:
    """What the dry run did and found, for the terminal."""
    lines = [f"Dry run of the {profile.name} profile: " + ", ".join(f"{s} {t:.0f} s" for s, t in seconds.items())
             + f" ({sum(seconds.values()):.0f} s in all)."]
    if problems:
        lines += [f"{len(problems)} problem(s):"] + [f"  ✗ {p}" for p in problems]
    else:
        layers, width, heads, context = expected_shape(profile, model).values()
        lines.append(f"✓ every model has {'the starting model' if model else 'the profile'}'s shape ({layers} "
                     f"layers, width {width}, {heads} heads, context {context}; LoRA rank {profile.peft.r}), and "
                     f"every global batch splits evenly over {', '.join(map(str, LAUNCH_SIZES))} processes.")
    return "\n".join(lines)
