"""Where the course runs: device, seed, profile, and the offline guard.

A *profile* sets sizes (model width and depth, steps, batch, number of prompts) and one switch,
the precision of the forward passes on CUDA (``autocast``); the code path is the same on every
device. ``cpu`` is sized so that each lesson finishes in a few minutes on a 2-core laptop and still
visibly learns; ``gpu`` trains a bigger model for longer, its forward passes in bf16.

Environment variables a learner or instructor may set:

``RLHF_PROFILE``   ``cpu`` or ``gpu`` (default: ``gpu`` when CUDA is available, else ``cpu``)
``RLHF_DEVICE``    ``cpu``, ``cuda`` or ``mps`` (default: the best available)
``RLHF_ALLOW_HUB`` ``1`` to let the Hugging Face libraries reach the network (default: offline)
``RLHF_MODEL``     a model folder (or, with ``RLHF_ALLOW_HUB=1``, a hub id) that SFT starts from
                   instead of the base GPT (default: the base GPT; see ``models``)
``RLHF_AUTOCAST_ANY_DEVICE`` ``1`` to run the profile's number format (bf16 for ``gpu``) on a CPU
                   too, as ``python -m course dry-run`` does (default: only on CUDA)
"""

from __future__ import annotations

import contextlib
import os
import socket
import random
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch

PROFILE_VAR = "RLHF_PROFILE"
DEVICE_VAR = "RLHF_DEVICE"
SIZES_VAR = "RLHF_SIZES"  # size overrides, e.g. "ppo.steps=40,sft.max_steps=600" (see with_sizes)
_SIZE_SECTIONS = ("gpt", "sft", "peft", "reward", "ppo", "beyond")
ALLOW_HUB_VAR = "RLHF_ALLOW_HUB"
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


class CourseConfigError(ValueError):
    """A setting the course cannot use; the message says what to do instead."""


@dataclass(frozen=True)
class GPTSizes:
    """The lesson-02 GPT: its shape and how long it trains."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int  # context length in tokens
    batch_size: int
    max_steps: int
    lr: float  # peak AdamW learning rate (warmup, then cosine decay to a tenth)
    muon_lr: float | None = None  # peak Muon learning rate for the blocks' matrices; None: AdamW only


@dataclass(frozen=True)
class SFTSizes:
    """Lesson 03's supervised fine-tuning: how long, how wide, and how many prompts to judge."""

    max_steps: int
    batch_size: int
    lr: float


@dataclass(frozen=True)
class PEFTSizes:
    """Lesson 04's parameter-efficient fine-tuning: the LoRA run, the rank sweep, the other methods."""

    max_steps: int  # the ``sft_lora`` adapter: as many steps as full SFT, for a fair comparison
    sweep_steps: int  # each run of the comparison (ranks, IA3, prompt tuning): shorter, to fit the lesson
    batch_size: int
    lr: float  # adapters start from zero and are few: they take a larger learning rate than SFT
    r: int  # the rank of the ``sft_lora`` adapter
    alpha: int
    ranks: tuple[int, ...]  # the rank sweep, with ``r``
    virtual_tokens: int  # prompt tuning's learned prefix length


@dataclass(frozen=True)
class RewardSizes:
    """Lesson 05's reward model: how many comparisons to sample, and how long to train on them."""

    prompts: int  # distinct training prompts the SFT model answers
    responses_per_prompt: int  # K: every pair of one prompt's K answers is compared, K*(K-1)/2 pairs
    max_steps: int
    batch_size: int  # comparisons per step
    lr: float


# ~2,100 training pairs, 150 steps (about 2 epochs): sampling ~15 s, training ~55 s on one core of a
# 2-core laptop. Also what a profile written before lesson 05 existed (a test's, say) gets.
CPU_REWARD = RewardSizes(prompts=240, responses_per_prompt=8, max_steps=150, batch_size=32, lr=5e-4)


@dataclass(frozen=True)
class PPOSizes:
    """Lesson 06's PPO: the ``ppo`` run, how it is judged, and the over-optimisation runs."""

    steps: int  # PPO steps of the ``ppo`` run
    batch_size: int  # prompts (one answer each) per PPO step
    mini_batch_size: int
    ppo_epochs: int
    lr: float
    kl_coef: float  # beta of the ``ppo`` run: the price of a nat of KL from the SFT model
    max_new_tokens: int
    eval_every: int  # judge the policy on ``checkpoint_prompts`` held-out prompts every so many steps
    checkpoint_prompts: int  # the first prompts of the evaluation protocol's set (``evaluation.prompts``)
    overopt_betas: tuple[float, ...]  # one run from the SFT model per beta, each ``overopt_steps`` long
    overopt_lr: float  # those runs go further, faster: a larger learning rate
    overopt_steps: int
    overopt_eval_every: int


# ~65 s for the ppo run and ~135 s for the over-optimisation run on one core of a 2-core laptop
CPU_PPO = PPOSizes(steps=20, batch_size=64, mini_batch_size=16, ppo_epochs=2, lr=2e-4, kl_coef=0.1, max_new_tokens=32,
                   eval_every=5, checkpoint_prompts=120, overopt_betas=(0.0,), overopt_lr=5e-4,
                   overopt_steps=30, overopt_eval_every=3)


@dataclass(frozen=True)
class BeyondSizes:
    """Lesson 07's DPO and GRPO runs, and the arena that judges every model."""

    dpo_steps: int
    dpo_batch_size: int  # comparisons per step
    dpo_lr: float
    dpo_beta: float  # DPO's beta: the strength of the implicit KL tie to the SFT model
    grpo_steps: int  # each of the two GRPO runs (reward model, verifiable rule)
    grpo_prompts: int  # prompts per GRPO step; each is answered ``grpo_generations`` times
    grpo_generations: int  # the group size G
    grpo_lr: float
    grpo_beta: float  # GRPO's KL coefficient
    max_new_tokens: int


# GRPO: 60 steps of 8 prompts x 4 answers (about 15 s each run). At 30 steps the rule-rewarded run's gold
# gain over SFT was not significant (+0.048 [-0.013, +0.107]); at 60 it was +0.18 [+0.13, +0.24].
CPU_BEYOND = BeyondSizes(dpo_steps=60, dpo_batch_size=16, dpo_lr=1e-4, dpo_beta=0.3, grpo_steps=60, grpo_prompts=8,
                         grpo_generations=4, grpo_lr=1e-4, grpo_beta=0.02, max_new_tokens=32)


@dataclass(frozen=True)
class Profile:
    """Sizes for one kind of machine, and the precision of its forward passes on CUDA.

    Nothing here changes the algorithm, only how big it runs and (``autocast``) in what number
    format: ``"bf16"`` runs the forward passes of the course's training loops in bfloat16
    on a CUDA device (see ``autocast``), and asks trl's Trainer for ``bf16=True``; ``None`` keeps
    everything in float32.
    """

    name: str
    description: str
    gpt: GPTSizes
    sft: SFTSizes
    peft: PEFTSizes
    reward: RewardSizes = CPU_REWARD
    ppo: PPOSizes = CPU_PPO
    beyond: BeyondSizes = CPU_BEYOND
    # held-out prompts every model is judged on (``evaluation``): 200 per family, so a rate's 95 %
    # interval is at most about 5 points either side
    eval_prompts: int = 400
    autocast: str | None = None  # "bf16": forward passes in bfloat16 on CUDA (see ``autocast``); None: fp32

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "cpu": Profile(
        name="cpu",
        description="a laptop CPU: small models, each lesson in a few minutes",
        # ~1.07 M parameters with the 2 k course tokenizer; ~2.3 M training tokens, ~2.5 minutes.
        # Muon and the learning rates were chosen at equal time (instructor guide, "The base model")
        gpt=GPTSizes(n_layer=4, n_head=4, n_embd=128, block_size=128, batch_size=8, max_steps=2200, lr=4e-3,
                     muon_lr=5e-3),
        sft=SFTSizes(max_steps=1200, batch_size=16, lr=1e-3),
        peft=PEFTSizes(max_steps=1200, sweep_steps=300, batch_size=16, lr=5e-3, r=8, alpha=16, ranks=(1, 32), virtual_tokens=8),
        reward=CPU_REWARD,
        ppo=CPU_PPO,
    ),
    "gpu": Profile(
        name="gpu",
        description="one CUDA GPU: a bigger model trained longer, same code",
        # muon_lr keeps the cpu profile's ratio to lr (1.25); not yet measured on a GPU
        gpt=GPTSizes(n_layer=8, n_head=8, n_embd=512, block_size=256, batch_size=64, max_steps=5000, lr=6e-4,
                     muon_lr=7.5e-4),
        sft=SFTSizes(max_steps=1500, batch_size=32, lr=3e-4),
        peft=PEFTSizes(max_steps=1500, sweep_steps=1500, batch_size=32, lr=2e-3, r=16, alpha=32, ranks=(1, 4, 64), virtual_tokens=16),
        reward=RewardSizes(prompts=960, responses_per_prompt=8, max_steps=300, batch_size=64, lr=2e-4),
        ppo=PPOSizes(steps=60, batch_size=128, mini_batch_size=32, ppo_epochs=2, lr=5e-5, kl_coef=0.1, max_new_tokens=32,
                     eval_every=10, checkpoint_prompts=200, overopt_betas=(0.0,), overopt_lr=2e-4,
                     overopt_steps=60, overopt_eval_every=5),
        beyond=BeyondSizes(dpo_steps=200, dpo_batch_size=32, dpo_lr=5e-5, dpo_beta=0.1, grpo_steps=100, grpo_prompts=16,
                           grpo_generations=8, grpo_lr=5e-5, grpo_beta=0.02, max_new_tokens=32),
        autocast="bf16",  # A100, H100, L4, RTX 30xx and newer; not yet run on a GPU (README, "Scale up")
    ),
}


def get_profile(name: str | None = None) -> Profile:
    """The profile named, else ``$RLHF_PROFILE``, else ``gpu`` with CUDA and ``cpu`` without;
    with the size overrides of ``$RLHF_SIZES`` applied (see ``with_sizes``)."""
    name = name or os.environ.get(PROFILE_VAR) or ("gpu" if torch.cuda.is_available() else "cpu")
    key = name.strip().lower()
    if key not in PROFILES:
        raise CourseConfigError(
            f"Unknown profile {name!r}. Valid profiles: {', '.join(PROFILES)}. "
            f"Set {PROFILE_VAR} to one of them, or unset it to choose automatically."
        )
    return with_sizes(PROFILES[key], os.environ.get(SIZES_VAR, ""))


def with_sizes(profile: Profile, overrides: str) -> Profile:
    """``profile`` with sizes replaced: ``"ppo.steps=40, sft.max_steps=600"``.

    Each override names a section of the profile (``gpt``, ``sft``, ``peft``, ``reward``, ``ppo``,
    ``beyond``) and one of its fields; the value takes that field's type. ``eval_prompts=40``, with
    no section, sets how many held-out prompts every model is judged on. Artifacts are keyed by
    their sizes, so changed sizes build new artifacts and never overwrite the default ones.
    """
    for item in filter(None, (part.strip() for part in overrides.split(","))):
        target, _, raw = item.partition("=")
        if target.strip() == "eval_prompts":
            profile = replace(profile, eval_prompts=_size_value(item, "eval_prompts", profile.eval_prompts, raw))
            continue
        section, _, field = target.strip().partition(".")
        sizes = getattr(profile, section, None) if section in _SIZE_SECTIONS else None
        if sizes is None or field not in {f.name for f in fields(sizes)} or not raw.strip():
            valid = ", ".join(f"{s}.<field>" for s in _SIZE_SECTIONS)
            raise CourseConfigError(f"Cannot apply the size override {item!r} ({SIZES_VAR}): write "
                                    f"section.field=value with section one of {valid}, e.g. ppo.steps=40 "
                                    "(or eval_prompts=N).")
        value = _size_value(item, f"{section}.{field}", getattr(sizes, field), raw)
        profile = replace(profile, **{section: replace(sizes, **{field: value})})
    return profile


def _size_value(item: str, name: str, current, raw: str):
    """``raw`` as the type of the size it replaces (a tuple: space-separated values)."""
    try:
        if isinstance(current, tuple):
            return tuple(type(current[0])(v) for v in raw.split())
        return type(current)(raw.strip())
    except ValueError:
        raise CourseConfigError(f"{item!r}: {name} takes a {type(current).__name__}, "
                                f"like its default {current!r}.") from None


def _mps_is_reliable() -> bool:
    """Apple's MPS backend: used when present and built (torch >= 2.x handles our ops)."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available() and mps.is_built())


def _cuda_device() -> torch.device:
    """The CUDA device: alone, the current one; under a launch (``LOCAL_RANK`` set by ``accelerate
    launch`` or ``torchrun``), this process's own GPU, so that N processes use N GPUs, not one."""
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is None:
        return torch.device("cuda")
    return torch.device("cuda", int(local_rank) % torch.cuda.device_count())


def get_device(name: str | None = None) -> torch.device:
    """CUDA, then Apple MPS, then CPU, unless ``name`` or ``$RLHF_DEVICE`` says otherwise.

    Under a multi-process launch, CUDA means this process's own GPU (``_cuda_device``)."""
    name = name or os.environ.get(DEVICE_VAR)
    if name:
        key = name.strip().lower()
        available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": _mps_is_reliable()}
        if key not in available:
            raise CourseConfigError(
                f"Unknown device {name!r}. Valid devices: cpu, cuda, mps. Set {DEVICE_VAR} to one "
                "of them, or unset it to choose automatically."
            )
        if not available[key]:
            raise CourseConfigError(
                f"{DEVICE_VAR}={name} but this machine has no {key} device. Unset {DEVICE_VAR} "
                "to use the best device available."
            )
        return _cuda_device() if key == "cuda" else torch.device(key)
    if torch.cuda.is_available():
        return _cuda_device()
    if _mps_is_reliable():
        return torch.device("mps")
    return torch.device("cpu")


AUTOCAST_ANY_DEVICE_VAR = "RLHF_AUTOCAST_ANY_DEVICE"  # "1": the profile's autocast on a CPU too (the dry run)
AUTOCAST_DTYPES = {"bf16": torch.bfloat16}  # fp16 would also need a gradient scaler: left out


def autocast_dtype(device, profile: Profile | None = None) -> torch.dtype | None:
    """The dtype the profile asks forward passes on ``device`` to run in: None means float32.

    Only CUDA: the ``gpu`` profile's ``bf16`` is for a GPU, where bfloat16 matrix multiplications
    run several times faster than float32 and activations take half the memory. On any other
    device (the tests' tiny models run on the CPU whatever the profile) the answer is None, and
    the profile is not even read, unless ``$RLHF_AUTOCAST_ANY_DEVICE`` is set: then the profile
    decides on every device. ``python -m course dry-run`` sets it, so that a CPU runs the ``gpu``
    profile in the number format a GPU would.
    """
    if torch.device(device).type != "cuda" and not os.environ.get(AUTOCAST_ANY_DEVICE_VAR):
        return None
    name = (profile or get_profile()).autocast
    if name is None:
        return None
    if name not in AUTOCAST_DTYPES:
        raise CourseConfigError(f"Unknown autocast {name!r} in the profile: use one of "
                                f"{', '.join(AUTOCAST_DTYPES)}, or None for float32.")
    return AUTOCAST_DTYPES[name]


def autocast(device, dtype: torch.dtype | None = None):
    """``with autocast(device):`` around a forward pass: bfloat16 where the profile asks, else nothing.

    Inside ``torch.autocast`` the matrix multiplications (linear layers, attention) run in
    ``dtype`` while the operations that need the range or the precision of float32 (softmax,
    layer norm, the losses) stay in float32; the weights, their gradients and the optimiser's
    state stay float32 throughout ("mixed precision"). bfloat16 keeps float32's exponent range,
    so no loss scaling is needed (float16 would need a ``GradScaler``). The backward pass runs
    outside the block and follows the forward's types by itself.

    ``dtype`` None asks the profile (``autocast_dtype``): on a CPU, and with the ``cpu`` profile
    anywhere, this is a ``nullcontext`` and the code computes exactly what it computed without
    it. Pass ``torch.bfloat16`` to force it on any device (the tests do, on the CPU, where bf16
    autocast works too).
    """
    dtype = dtype or autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def seed_everything(seed: int = 1337) -> None:
    """Seed Python, NumPy and PyTorch (all devices) so runs repeat."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA and MPS generators


def hub_allowed() -> bool:
    """True only when the learner opted in to the network with ``RLHF_ALLOW_HUB=1``."""
    return os.environ.get(ALLOW_HUB_VAR, "").strip().lower() in {"1", "true", "yes"}


def go_offline() -> None:
    """Tell the Hugging Face libraries never to reach the network (unless opted in).

    The course ships or generates everything it needs; these switches make a stray
    ``from_pretrained("some/hub-name")`` fail fast with a clear error instead of hanging on
    conference Wi-Fi. They must be set before ``transformers`` or ``datasets`` is imported,
    which is why ``import rlhf_helpers`` calls this.
    """
    if hub_allowed():
        return
    for var in OFFLINE_VARS:
        os.environ.setdefault(var, "1")


def quiet_library_progress_bars() -> None:
    """Switch off the progress bars of the Hugging Face libraries (unless the learner set them).

    transformers draws a "Loading weights" bar on every ``from_pretrained`` and datasets one per
    ``map``: in a notebook each stays behind as a frozen widget. The course's own bars (see
    ``artifacts.ProgressBar``) show the steps that take time. Set before the libraries are
    imported, which is why ``import rlhf_helpers`` calls this.
    """
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(var, "1")


@contextlib.contextmanager
def network_blocked():
    """Inside this block any attempt to open a network connection raises ``OSError``.

    The course's tests and ``python -m course doctor`` use it to prove that nothing needs the
    network: a hidden download would fail loudly here instead of succeeding on a lucky day.
    """
    def refuse(*args, **kwargs):
        raise OSError("network access attempted while the network is blocked")

    saved = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo, socket.create_connection
    socket.socket.connect = socket.socket.connect_ex = refuse
    socket.getaddrinfo = socket.create_connection = refuse
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo, socket.create_connection = saved
