"""Reward modelling (lesson 05): learn a reward from comparisons. Step 2 of the InstructGPT recipe.

People are far better at saying which of two answers they prefer than at scoring one answer on
an absolute scale, so RLHF collects *comparisons* and fits a reward ``r(prompt, response)`` under
the Bradley-Terry model, ``P(a ≻ b) = sigmoid(r(a) - r(b))``. This module does it in three parts.

1. **Comparison data** (the ``comparisons`` artifact). The SFT model answers N training prompts
   K times each (temperature 1, for variety). All K·(K-1)/2 pairs of one prompt's answers are
   labelled by the simulated labeler of ``rlhf_helpers.labeler``, whose noise ``tau`` is
   calibrated so that it agrees with the gold ordering 75 % of the time, like real labelers; then
   the *prompts* are split into train and held-out (``preferences.split_by_prompt``).
2. **The reward model** (the ``reward_model`` artifact). The SFT model with its language-model
   head swapped for a scalar head (``AutoModelForSequenceClassification`` with one label), read at
   the last real token of prompt + response rendered with the chat template. trl's
   ``RewardTrainer`` trains it on the pairwise loss ``-log sigmoid(r_chosen - r_rejected)``, on the
   simulated labels or, with ``RLHF_LABELS=mine``, on the labels you gave in lesson 05's widget.
   It is saved with the mean and standard deviation of its scores on SFT answers, which lesson 06
   uses to normalise rewards, and with the comparisons it was trained and tested on.
3. **Evaluation.** Accuracy on held-out pairs against the labels and against the gold ordering,
   the labeler's own ceiling, calibration, and probes for quirks that a policy could exploit.

Two choices about the data, both deliberate:

- An answer cut off by the token limit is dropped. The chat template closes every answer with
  ``<|im_end|>``, so the reward model could not see that it was cut off; lesson 06 gives such
  answers a fixed penalty instead of asking the reward model.
- A pair whose two answers have exactly the same gold utility is dropped: the labeler calls it a
  tie, as you can in the widget, and a tie says nothing about which answer is better.

Left out: ties as half-labels, margins, ensembles of reward models, InstructGPT's trick of putting
all of a prompt's pairs in one batch element (we shuffle pairs), and training for more than the
two or three epochs a tiny model needs (InstructGPT trained one epoch: more overfits).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from rlhf_helpers import gpt, instructions, labeler, models, preferences, sft
from rlhf_helpers.tokenizers import end_of_answer_id
from rlhf_helpers.preferences import Comparison

REWARD_VERSION = 1  # bump when the recipe changes, so cached reward models are rebuilt
COMPARISONS_VERSION = 1
REWARD_SEED = 0
CONTROL_SEED = 0  # the untrained-head control of lesson 05's checks
LABELS_VAR = "RLHF_LABELS"
LABEL_SOURCES = ("simulated", "mine")
MIN_OWN_COMPARISONS = 40  # fewer of your own labels cannot train a reward model worth testing
TARGET_AGREEMENT = 0.75  # how often the simulated labeler agrees with the gold ordering
HELDOUT_FRACTION = 0.2  # of the prompts, with all their comparisons
TEMPERATURE = 1.0
MAX_NEW_TOKENS = 40  # an SFT answer is one line of 10-20 tokens; longer ones are rambling
SAMPLING_BATCH = 512  # rows per generate() call: on a CPU, big batches cost far less per answer


# --------------------------------------------------------------------------------------------
# Which labels: the simulated labeler's, or yours.
# --------------------------------------------------------------------------------------------

def labels_source() -> str:
    """``$RLHF_LABELS``: ``simulated`` (the default), ``mine`` (your labels file), or ``file``: the
    path of a labels file, such as a workshop's merged labels (``python -m course labels merge``)."""
    raw = os.environ.get(LABELS_VAR, "").strip()
    value = raw.lower() or "simulated"
    if value in LABEL_SOURCES:
        return value
    if _named_file(raw).is_file():
        return "file"
    from rlhf_helpers.env import CourseConfigError

    raise CourseConfigError(
        f"Unknown {LABELS_VAR}={os.environ[LABELS_VAR]!r}. Set it to 'simulated' (the course's "
        "simulated labeler, the default), 'mine' (the labels you gave in lesson 05's widget) or the "
        "path of an existing labels file (a workshop's merged labels), or unset it.")


def labels_file() -> Path:
    """The labels file that ``$RLHF_LABELS`` trains on (``mine``: yours; else the path it names)."""
    source = labels_source()
    if source == "simulated":
        raise ValueError("RLHF_LABELS is 'simulated': there is no labels file to train on.")
    return preferences.labels_path() if source == "mine" else _named_file(os.environ[LABELS_VAR].strip())


def _named_file(raw: str) -> Path:
    """A path as given, or else relative to the course folder: a notebook's kernel runs in
    ``lessons/``, while the learner named the file from the course folder."""
    from rlhf_helpers.artifacts import course_root

    path = Path(raw).expanduser()
    root = course_root()
    if not path.is_absolute() and not path.exists() and root is not None and (root / path).exists():
        return root / path
    return path


# --------------------------------------------------------------------------------------------
# 1. Comparison data: K answers per prompt from the SFT model, every pair labelled.
# --------------------------------------------------------------------------------------------

def comparison_prompts(n: int) -> list[str]:
    """The first ``n`` distinct prompts of the training demonstrations.

    Training prompts, so none is a held-out SFT prompt: lessons 03 and 06 judge models on those.
    """
    prompts = list(dict.fromkeys(task.prompt for task in instructions.make_tasks("train")))
    if not 0 < n <= len(prompts):
        raise ValueError(f"Asked for {n} prompts, but there are {len(prompts)} distinct training prompts.")
    return prompts[:n]


@torch.no_grad()
def sample_responses(model, tokenizer, prompts: list[str], k: int, *, temperature: float = TEMPERATURE,
                     max_new_tokens: int = MAX_NEW_TOKENS, seed: int = 0, batch_size: int = SAMPLING_BATCH,
                     progress=None) -> tuple[list[list[str]], list[list[bool]]]:
    """``k`` sampled answers per prompt, and whether each *ended* (produced ``<|im_end|>``).

    Plain temperature sampling (no top-k), left-padded batches as in ``sft.generate_responses``;
    the answer's text stops at its first end token. The same ``seed`` and ``batch_size`` give the
    same answers on the same device. ``progress`` (a tqdm bar) advances once per batch.
    """
    model.eval()
    device = next(model.parameters()).device
    stop_ids = [end_of_answer_id(tokenizer), tokenizer.eos_token_id]
    rows = [p for p in prompts for _ in range(k)]  # each prompt k times, side by side
    torch.manual_seed(seed)
    texts, ended = [], []
    for start in range(0, len(rows), batch_size):
        chats = [sft.chat_prompt(tokenizer, p) for p in rows[start:start + batch_size]]
        batch = tokenizer(chats, return_tensors="pt", padding=True, padding_side="left",
                          add_special_tokens=False).to(device)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                             top_k=0, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)
        new = out[:, batch["input_ids"].size(1):].cpu()
        ended += torch.isin(new, torch.tensor(stop_ids)).any(dim=1).tolist()
        texts += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
        if progress is not None:
            progress.update()
    return [texts[i:i + k] for i in range(0, len(texts), k)], [ended[i:i + k] for i in range(0, len(ended), k)]


def finished_answers(responses: list[list[str]], ended: list[list[bool]]) -> list[list[str]]:
    """Each prompt's answers without those cut off by the token limit (see the module's notes)."""
    return [[r for r, e in zip(rs, es) if e] for rs, es in zip(responses, ended)]


def gold_differences(comparisons: list[Comparison]) -> list[float]:
    """``U(chosen) - U(rejected)`` for each comparison: positive where the label agrees with gold."""
    return [labeler.gold_utility(c.prompt, c.chosen) - labeler.gold_utility(c.prompt, c.rejected)
            for c in comparisons]


def without_ties(comparisons: list[Comparison]) -> list[Comparison]:
    """The comparisons whose two answers differ in gold utility (the labeler calls the rest a tie)."""
    return [c for c, d in zip(comparisons, gold_differences(comparisons)) if d != 0]


def pair_differences(prompts: list[str], answers: list[list[str]]) -> list[float]:
    """``U(a) - U(b)`` over every pair of each prompt's answers: what ``tau`` is calibrated on."""
    differences = []
    for prompt, rs in zip(prompts, answers):
        utilities = [labeler.gold_utility(prompt, r) for r in rs]
        differences += [utilities[i] - utilities[j] for i in range(len(rs)) for j in range(i + 1, len(rs))]
    return differences


@dataclass
class ComparisonData:
    """The sampled answers, the simulated labeler's ``tau``, and the train/held-out comparisons."""

    prompts: list[str]
    responses: list[list[str]]  # every sampled answer, finished or not
    ended: list[list[bool]]
    tau: float
    train: list[Comparison]
    heldout: list[Comparison]
    info: dict


def make_comparison_data(model, tokenizer, sizes, *, seed: int = REWARD_SEED, progress=None) -> ComparisonData:
    """Sample, calibrate the labeler, label every pair, drop ties, and split by prompt."""
    start = time.perf_counter()
    prompts = comparison_prompts(sizes.prompts)
    if progress is not None:
        progress.reset(total=math.ceil(len(prompts) * sizes.responses_per_prompt / SAMPLING_BATCH))
    responses, ended = sample_responses(model, tokenizer, prompts, sizes.responses_per_prompt, seed=seed,
                                        progress=progress)
    answers = finished_answers(responses, ended)
    tau = labeler.calibrate_tau(pair_differences(prompts, answers), TARGET_AGREEMENT)
    labelled = preferences.make_comparisons(prompts, answers, labeler.SimulatedLabeler(tau=tau, seed=seed))
    decided = without_ties(labelled)
    train, heldout = preferences.split_by_prompt(decided, HELDOUT_FRACTION, seed=seed)
    info = {"prompts": len(prompts), "answers": sum(map(len, responses)),
            "unfinished": sum(not e for es in ended for e in es), "pairs": len(labelled),
            "ties": len(labelled) - len(decided), "train_pairs": len(train), "heldout_pairs": len(heldout),
            "tau": tau, "labeler_agreement": preferences.gold_agreement(decided),
            "seconds": round(time.perf_counter() - start, 1)}
    return ComparisonData(prompts, responses, ended, tau, train, heldout, info)


def write_comparisons(path: Path, comparisons: list[Comparison]) -> None:
    """One JSON object per line: prompt, chosen, rejected, source."""
    path.write_text("".join(json.dumps(asdict(c), ensure_ascii=False) + "\n" for c in comparisons), encoding="utf-8")


def read_comparisons(path: Path) -> list[Comparison]:
    """The comparisons ``write_comparisons`` wrote (files the course made, so no row checks)."""
    return [Comparison(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]


def comparisons_config(profile=None) -> dict:
    """What the ``comparisons`` artifact depends on: the SFT model, the sizes, the sampling, the labeler."""
    from rlhf_helpers.env import get_profile

    profile = profile or get_profile()
    return {"sft": sft.sft_config(profile), "prompts": profile.reward.prompts,
            "responses_per_prompt": profile.reward.responses_per_prompt, "temperature": TEMPERATURE,
            "max_new_tokens": MAX_NEW_TOKENS, "target_agreement": TARGET_AGREEMENT,
            "heldout_fraction": HELDOUT_FRACTION, "seed": REWARD_SEED, "version": COMPARISONS_VERSION}


def _build_comparisons(folder: Path, progress) -> None:
    from rlhf_helpers.env import get_profile

    model, tokenizer = sft.load_sft_model()
    data = make_comparison_data(model, tokenizer, get_profile().reward, progress=progress)
    write_comparisons(folder / "train.jsonl", data.train)
    write_comparisons(folder / "heldout.jsonl", data.heldout)
    (folder / "answers.jsonl").write_text("".join(
        json.dumps({"prompt": p, "answers": rs, "ended": es}, ensure_ascii=False) + "\n"
        for p, rs, es in zip(data.prompts, data.responses, data.ended)), encoding="utf-8")
    (folder / "info.json").write_text(json.dumps(data.info, indent=1))


def comparisons_path() -> Path:
    """The folder of the ``comparisons`` artifact (sampled and labelled in under a minute, if missing)."""
    from rlhf_helpers import artifacts

    return artifacts.fetch("comparisons", comparisons_config(), _build_comparisons,
                           made_by="lesson 05 (rlhf_helpers.reward)")


def simulated_comparisons() -> tuple[list[Comparison], list[Comparison]]:
    """``(train, heldout)`` comparisons labelled by the simulated labeler."""
    folder = comparisons_path()
    return read_comparisons(folder / "train.jsonl"), read_comparisons(folder / "heldout.jsonl")


def sampled_answers() -> list[dict]:
    """Every sampled answer: one ``{"prompt", "answers", "ended"}`` per prompt."""
    text = (comparisons_path() / "answers.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line]


def comparison_info() -> dict:
    """Counts, the calibrated ``tau`` and the labeler's measured agreement with gold."""
    return json.loads((comparisons_path() / "info.json").read_text())


def pairs_to_label(seed: int = 0) -> list[tuple[str, str, str]]:
    """The training pairs as ``(prompt, a, b)`` for you to label, shuffled, each pair's order random.

    The order must be random: if the simulated labeler's choice were always shown as A, you would
    learn its answer from the position, not from the text.
    """
    train, _ = simulated_comparisons()
    rng = random.Random(seed)
    pairs = [(c.prompt, c.chosen, c.rejected) if rng.random() < 0.5 else (c.prompt, c.rejected, c.chosen)
             for c in train]
    rng.shuffle(pairs)
    return pairs


# --------------------------------------------------------------------------------------------
# Your own labels.
# --------------------------------------------------------------------------------------------

def own_comparisons(heldout_prompts: set[str], path: Path | str | None = None, *,
                    verbose: bool = True) -> list[Comparison]:
    """Your labels as comparisons to train on; ``CourseConfigError`` if there are too few.

    Bad rows are named and skipped (the file is never changed); ties and skips give no comparison;
    labels on a held-out prompt are left out, so the held-out test stays a test.
    """
    from rlhf_helpers.env import CourseConfigError

    path = Path(path) if path is not None else preferences.labels_path()
    report = preferences.load_labels(path)
    if verbose:
        print(f"Your labels in {path}: {report.summary()}.")
        for problem in report.problems:
            print(f"  skipped {problem}")
    comparisons = [c for c in report.comparisons if c.prompt not in heldout_prompts]
    if verbose and len(comparisons) < len(report.comparisons):
        print(f"  {len(report.comparisons) - len(comparisons)} labels on held-out prompts are kept out of training.")
    if len(comparisons) < MIN_OWN_COMPARISONS:
        raise CourseConfigError(
            f"{LABELS_VAR}={os.environ.get(LABELS_VAR, 'mine')}, but you have {len(comparisons)} usable labels (A or B answers) in {path}, "
            f"and the reward model needs at least {MIN_OWN_COMPARISONS}. Label "
            f"{MIN_OWN_COMPARISONS - len(comparisons)} more pairs with the widget in lesson 05, or unset "
            f"{LABELS_VAR} to train on the simulated labeler's labels.")
    return comparisons


def _labels_digest(path: Path) -> str:
    """A hash of the labels file: new labels, new reward model."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else "missing"


# --------------------------------------------------------------------------------------------
# 2. The reward model: trl's RewardTrainer on a scalar-head copy of the SFT model.
# --------------------------------------------------------------------------------------------

def reward_model_from_sft(folder, tokenizer):
    """The SFT model saved in ``folder`` with its language-model head swapped for a scalar head.

    ``AutoModelForSequenceClassification`` with ``num_labels=1`` keeps the transformer (the policy's
    backbone, whatever its architecture: ``GPT2ForSequenceClassification``,
    ``LlamaForSequenceClassification``, ...), drops ``lm_head`` and adds ``score``, a
    ``Linear(hidden size, 1)`` without bias, freshly initialised (seed first for a repeatable one).
    It reads the score at the last token that is not padding, so ``config.pad_token_id`` must be
    the tokenizer's pad token.
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from rlhf_helpers.env import get_device

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight is missing from the checkpoint": yes, it is new
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1, use_safetensors=True,
                                                                   trust_remote_code=False)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(get_device())


def reward_trainer_config(sizes, output_dir: str, **overrides):
    """A ``RewardConfig`` for a CPU or a GPU (``sft.trainer_settings``: bf16 only where the profile
    asks for it on CUDA, no activation checkpointing), no margin and no reward centring (the loss is
    exactly ``-log sigmoid(r_c - r_r)``), no saving, no hub."""
    from trl import RewardConfig

    settings = sft.trainer_settings(output_dir, sizes.max_steps, sizes.batch_size, sizes.lr, REWARD_SEED)
    settings.update(logging_steps=max(1, sizes.max_steps // 40), max_length=128, center_rewards_coefficient=None)
    return RewardConfig(**{**settings, **overrides})


def reward_trainer(model, tokenizer, comparisons: list[Comparison], sizes, output_dir: str, callbacks=None,
                   **overrides):
    """trl's ``RewardTrainer`` on ``comparisons``, configured for this machine, printing nothing.

    ``model`` has one output (``num_labels=1``), as ``reward_model_from_sft`` makes it. Building the
    trainer tokenizes the pairs: ``trainer.train_dataset`` then holds ``chosen_ids`` and
    ``rejected_ids``, and ``trainer.data_collator`` stacks a batch as the chosen rows followed by the
    rejected rows, right-padded.
    """
    from trl import RewardTrainer

    config = reward_trainer_config(sizes, output_dir, **overrides)
    with sft.quiet_datasets():
        trainer = RewardTrainer(model=model, args=config,
                                train_dataset=preferences.to_preference_dataset(comparisons),
                                processing_class=tokenizer, callbacks=callbacks)
    return sft.quiet_trainer(trainer)


def reward_step(model, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor], loss_fn,
                max_grad_norm: float = 1.0) -> torch.Tensor:
    """One optimisation step of the reward model, as trl's ``RewardTrainer`` takes it; return the
    batch's loss (before the update, detached).

    ``batch`` is what trl's collator makes of N comparisons: ``input_ids`` and ``attention_mask``
    with 2N right-padded rows, the N chosen answers first, then the N rejected ones in the same
    order. The model gives one reward per row (its single output, read at the last real token), so
    the first half of the rewards is the chosen answers' and the second half the rejected ones';
    ``loss_fn(chosen_rewards, rejected_rewards)`` is the pairwise loss of exercise 05.2. The rest
    is the update every step of the course shares (``gpt.update``): clear the old gradients,
    backward, clip their norm to ``max_grad_norm`` (0: no clipping), step.
    """
    rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    chosen_rewards, rejected_rewards = rewards.chunk(2)
    return gpt.update(model, [optimizer], loss_fn(chosen_rewards, rejected_rewards), max_grad_norm)


def train_reward_model(comparisons: list[Comparison], sizes, progress=None):
    """Train a reward model from the SFT model on ``comparisons``; return (model, tokenizer, logs, seconds)."""
    from transformers import AutoTokenizer

    from rlhf_helpers.env import seed_everything

    seed_everything(REWARD_SEED)
    sft_folder = sft.sft_model_path() / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(sft_folder))
    model = reward_model_from_sft(sft_folder, tokenizer)
    with tempfile.TemporaryDirectory() as out:
        trainer = reward_trainer(model, tokenizer, comparisons, sizes, out,
                                 callbacks=[sft._progress_callback(progress)] if progress is not None else None)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return sft.trained_model(trainer), tokenizer, trainer.state.log_history, seconds


def render(tokenizer, prompt: str, response: str) -> list[int]:
    """The token ids the reward model reads: the conversation through the chat template, exactly as
    trl's ``RewardTrainer`` tokenizes a conversational pair (ending ``<|im_end|>`` and a newline)."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


@torch.no_grad()
def score(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 64) -> torch.Tensor:
    """The reward of each (prompt, response), a float tensor on the CPU, read at the last real token.

    Rows are right-padded with the pad token, as in training; the model finds the last token that
    is not padding itself (``config.pad_token_id``). A conversation longer than the context keeps
    its first ``models.context_length(model)`` tokens.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses: they must pair up.")
    model.eval()
    device = next(model.parameters()).device
    limit = models.context_length(model)
    scores = []
    for start in range(0, len(prompts), batch_size):
        ids = [render(tokenizer, p, r)[:limit] for p, r in zip(prompts[start:start + batch_size],
                                                                responses[start:start + batch_size])]
        width = max(map(len, ids))
        input_ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in ids], device=device)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids], device=device)
        scores.append(model(input_ids=input_ids, attention_mask=mask).logits[:, 0].float().cpu())
    return torch.cat(scores) if scores else torch.zeros(0)


class RewardStats(NamedTuple):
    """Mean and standard deviation of the reward on SFT answers; ``(r - mean) / std`` normalises."""

    mean: float
    std: float


def normalisation_stats(model, tokenizer, prompts: list[str], responses: list[str]) -> RewardStats:
    """The reward model's mean and standard deviation on these (SFT) answers.

    Lesson 06 subtracts the mean and divides by the standard deviation, so that the SFT model's own
    answers score about 0 with spread 1: PPO's step sizes then do not depend on the reward's scale.
    """
    rewards = score(model, tokenizer, prompts, responses)
    stats = RewardStats(rewards.mean().item(), rewards.std().item())
    if not (math.isfinite(stats.mean) and math.isfinite(stats.std) and stats.std > 0):
        raise ValueError(f"The reward model scores {len(responses)} different answers with mean {stats.mean} and "
                         f"standard deviation {stats.std}: it does not tell them apart, and dividing by that "
                         "would make every PPO reward infinite or NaN. Train it longer (reward.max_steps) or on "
                         "more comparisons (reward.prompts).")
    return stats


def reward_config(profile=None) -> dict:
    """What the ``reward_model`` artifact depends on: the comparisons, the sizes, whose labels."""
    from rlhf_helpers.env import get_profile

    profile = profile or get_profile()
    source = labels_source()
    config = {"comparisons": comparisons_config(profile), "reward": asdict(profile.reward), "labels": source,
              "seed": REWARD_SEED, "version": REWARD_VERSION}
    if source != "simulated":
        config["labels_sha256"] = _labels_digest(labels_file())
    return config


def training_comparisons() -> tuple[list[Comparison], list[Comparison]]:
    """``(train, heldout)`` for the reward model: train on the simulated labels or yours, test on the
    simulated held-out pairs either way (your labels are never on a held-out prompt)."""
    train, heldout = simulated_comparisons()
    if labels_source() != "simulated":
        train = own_comparisons({c.prompt for c in heldout}, labels_file())
    return train, heldout


def _build_reward_model(folder: Path, progress) -> None:
    from rlhf_helpers.env import get_profile

    train, heldout = training_comparisons()
    answers = sampled_answers()
    heldout_prompts = {c.prompt for c in heldout}
    model, tokenizer, logs, seconds = train_reward_model(train, get_profile().reward, progress)
    # normalisation statistics: the reward of every finished SFT answer to a training prompt
    pairs = [(row["prompt"], r) for row in answers if row["prompt"] not in heldout_prompts
             for r, e in zip(row["answers"], row["ended"]) if e]
    stats = normalisation_stats(model, tokenizer, *map(list, zip(*pairs)))
    model.save_pretrained(folder / "model")  # safetensors
    tokenizer.save_pretrained(folder / "model")
    (folder / "stats.json").write_text(json.dumps({**stats._asdict(), "answers": len(pairs)}, indent=1))
    (folder / "log_history.json").write_text(json.dumps(logs, indent=1))
    write_comparisons(folder / "train.jsonl", train)
    write_comparisons(folder / "heldout.jsonl", heldout)
    (folder / "figures.json").write_text(json.dumps({
        "rm_train_seconds": round(seconds, 1), "n_train_pairs": len(train), "labels": labels_source(),
        "tau": comparison_info()["tau"]}, indent=1))


def reward_model_path() -> Path:
    """The folder of the ``reward_model`` artifact (trained in about a minute on a CPU, if missing).

    With ``RLHF_LABELS=mine`` it is trained on your labels file; new labels give a new artifact.
    """
    from rlhf_helpers import artifacts

    if labels_source() != "simulated":  # before building anything: enough labels? (bad rows are named when it builds)
        own_comparisons({c.prompt for c in simulated_comparisons()[1]}, labels_file(), verbose=False)
    return artifacts.fetch("reward_model", reward_config(), _build_reward_model,
                           made_by="lesson 05 (rlhf_helpers.reward)", together=True)


def load_reward_model():
    """``(model, tokenizer, stats)``: the reward model (a ``GPT2ForSequenceClassification`` unless
    ``--model`` chose another architecture) in eval mode on the course device, its tokenizer, and its
    ``RewardStats`` on SFT answers."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_helpers.env import get_device

    folder = reward_model_path()
    model = AutoModelForSequenceClassification.from_pretrained(str(folder / "model"), use_safetensors=True,
                                                               trust_remote_code=False)
    stats = json.loads((folder / "stats.json").read_text())
    return (model.to(get_device()).eval(), AutoTokenizer.from_pretrained(str(folder / "model")),
            RewardStats(stats["mean"], stats["std"]))


def load_comparisons() -> tuple[list[Comparison], list[Comparison]]:
    """``(train, heldout)``: the comparisons the reward model was trained and tested on (lesson 07's
    DPO trains on the same)."""
    folder = reward_model_path()
    return read_comparisons(folder / "train.jsonl"), read_comparisons(folder / "heldout.jsonl")


def reward_log_history() -> list[dict]:
    """The Trainer's logged rows (step, loss, accuracy, margin, ...) saved with the reward model."""
    return json.loads((reward_model_path() / "log_history.json").read_text())


def reward_figures() -> dict:
    """Training seconds, number of training pairs, whose labels, and the labeler's ``tau``."""
    return json.loads((reward_model_path() / "figures.json").read_text())


# --------------------------------------------------------------------------------------------
# 3. Evaluation: accuracy, the labeler's ceiling, calibration, quirks.
# --------------------------------------------------------------------------------------------

def pair_rewards(model, tokenizer, comparisons: list[Comparison]) -> tuple[torch.Tensor, torch.Tensor]:
    """The rewards of each comparison's chosen and rejected answers."""
    prompts = [c.prompt for c in comparisons]
    return (score(model, tokenizer, prompts, [c.chosen for c in comparisons]),
            score(model, tokenizer, prompts, [c.rejected for c in comparisons]))


def accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> float:
    """How often the reward model agrees with the labels: the fraction with ``r_chosen > r_rejected``."""
    return (chosen_rewards > rejected_rewards).float().mean().item()


def accuracy_against_gold(comparisons: list[Comparison], chosen_rewards: torch.Tensor,
                          rejected_rewards: torch.Tensor) -> float:
    """How often the reward model ranks a pair as the gold utility does (gold ties left out)."""
    gold = torch.tensor(gold_differences(comparisons))
    decided = gold != 0
    if not decided.any():
        raise ValueError("No comparison has a gold ordering (all tie, or there are none).")
    agree = (chosen_rewards - rejected_rewards > 0) == (gold > 0)
    return agree[decided].float().mean().item()


# --------------------------------------------------------------------------------------------
# The control: what a reward model scores without learning anything.
# --------------------------------------------------------------------------------------------

def untrained_head_control(tokenizer, seed: int = CONTROL_SEED):
    """The SFT network with a fresh scalar head and no training: lesson 05's control.

    Its accuracy is not 50 %: features of the answers (length, whether they end) can line up
    with the labels by accident. A trained reward model has to beat *this*, not chance.
    """
    torch.manual_seed(seed)
    return reward_model_from_sft(sft.sft_model_path() / "model", tokenizer).eval()


def pair_correct(comparisons: list[Comparison], chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                 against: str = "labels") -> tuple[list[float], list[str]]:
    """1.0 for each pair the model ranks as the labels (or the gold utility) do, else 0.0, with its
    prompt. Against gold, pairs whose gold utilities tie are left out: they have no right answer."""
    margins = (chosen_rewards - rejected_rewards).tolist()
    if against == "labels":
        return [float(m > 0) for m in margins], [c.prompt for c in comparisons]
    if against != "gold":
        raise ValueError(f"against must be 'labels' or 'gold', got {against!r}")
    kept = [(m, g, c.prompt) for m, g, c in zip(margins, gold_differences(comparisons), comparisons) if g != 0]
    return [float((m > 0) == (g > 0)) for m, g, _ in kept], [p for _, _, p in kept]


def versus_control(comparisons: list[Comparison], trained: tuple, control: tuple, against: str = "labels"):
    """Trained minus control accuracy on the same pairs: a ``stats.Interval`` from a paired
    bootstrap over prompts. ``trained`` and ``control`` are ``(chosen_rewards, rejected_rewards)``."""
    from rlhf_helpers import stats

    mine, prompts = pair_correct(comparisons, *trained, against=against)
    theirs, _ = pair_correct(comparisons, *control, against=against)
    return stats.paired_difference(mine, theirs, prompts)


def check_beats_control(difference, against: str) -> None:
    """Lesson 05's check: the 95 % interval of (trained - control) accuracy lies above zero."""
    from rlhf_helpers import stats

    stats.check_above_zero(difference, f"The reward model beats the untrained-head control against the {against}"
                                       " (did training run?)")


def labeler_ceiling(comparisons: list[Comparison], tau: float) -> float:
    """The agreement with gold that the labeler itself reaches on average on these pairs.

    A reward model that ranked exactly as the gold utility does would agree with the *labels* this
    often, no more: on the pairs the labeler got wrong, being right counts as a miss.
    """
    return labeler.expected_agreement(gold_differences(comparisons), tau)


def calibration(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, bins: int = 5) -> list[dict]:
    """Is the reward model as sure as it should be? One row per confidence bin.

    For each pair the model prefers one answer with confidence ``sigmoid(|r_c - r_r|)`` (between 0.5
    and 1); ``accuracy`` is how often that preferred answer is the labelled one. A calibrated model
    is right 70 % of the time when it says 0.7. Rows: ``low``, ``high``, ``confidence`` (mean),
    ``accuracy`` and ``pairs``; empty bins are left out.
    """
    margin = chosen_rewards - rejected_rewards
    confidence, correct = torch.sigmoid(margin.abs()), (margin > 0).float()
    edges = torch.linspace(0.5, 1.0, bins + 1)
    rows = []
    for i in range(bins):
        inside = (confidence >= edges[i]) & ((confidence < edges[i + 1]) if i < bins - 1 else (confidence <= 1))
        if inside.any():
            rows.append({"low": edges[i].item(), "high": edges[i + 1].item(),
                         "confidence": confidence[inside].mean().item(), "accuracy": correct[inside].mean().item(),
                         "pairs": int(inside.sum())})
    return rows


# Edits that a reward model might like for the wrong reasons. Each maps an answer to a new answer.
QUIRKS = {
    "repeat the last word 4 times": lambda r: r + (" " + r.split()[-1].strip(".,;:!?")) * 4 if r.split() else r,
    "add cheerful words": lambda r: r + " Sweet love and joy!",
    "add gloomy words": lambda r: r + " Death, blood and woe!",
    "say it three times": lambda r: " ".join([r] * 3),
    "keep the first two words": lambda r: " ".join(r.split()[:2]),
}


def quirk_probes(model, tokenizer, prompts: list[str], responses: list[str],
                 stats: RewardStats | None = None) -> dict[str, dict]:
    """How each edit in ``QUIRKS`` changes the reward and the gold utility of the same answers.

    For each edit: ``reward_change`` (mean, in standard deviations of the reward when ``stats`` is
    given), ``reward_rises`` (the fraction of answers whose reward went up) and ``gold_change``
    (mean). An edit that raises the reward but lowers the gold utility is a quirk a policy can
    exploit: lesson 06 will find it.
    """
    scale = stats.std if stats is not None else 1.0
    before = score(model, tokenizer, prompts, responses)
    gold_before = torch.tensor(labeler.gold_utilities(prompts, responses))
    results = {}
    for name, edit in QUIRKS.items():
        edited = [edit(r) for r in responses]
        after = score(model, tokenizer, prompts, edited)
        gold_after = torch.tensor(labeler.gold_utilities(prompts, edited))
        results[name] = {"reward_change": ((after - before) / scale).mean().item(),
                         "reward_rises": (after > before).float().mean().item(),
                         "gold_change": (gold_after - gold_before).mean().item()}
    return results
