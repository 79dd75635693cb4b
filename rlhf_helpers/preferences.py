"""Preference data (lesson 05): comparisons, how to split them, and the learner's own labels.

A reward model learns from *comparisons*: a prompt, the response a person chose and the one they
rejected. InstructGPT showed labelers K responses to one prompt and turned each ranking into all
K·(K-1)/2 pairs, and kept those pairs together, in one batch and on one side of every split:
pairs that share a prompt are strongly correlated, and a prompt on both sides of a split would
let a reward model pass its held-out test by memorising that prompt.

Comparisons come from two sources:

- ``simulated``: ``make_comparisons`` asks a ``labeler.SimulatedLabeler``;
- ``human``: you, through the labelling widget of lesson 05, which appends one line per answer to
  ``labels_path()`` (``my_labels.jsonl`` in the artifacts folder). ``load_labels`` reads that file
  back, row by row, and reports bad rows instead of failing; nothing here ever rewrites it.

``to_preference_dataset`` gives trl's *conversational preference* format, which ``RewardTrainer``
and ``DPOTrainer`` both accept.

Left out: rankings turned into pairs with ties, several labelers per pair, and labels with margins.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

CHOICES = ("a", "b", "tie", "skip")  # what the learner can answer in the labelling widget
LABEL_FIELDS = ("prompt", "a", "b", "choice")  # required in every row; "time" is optional


@dataclass(frozen=True)
class Comparison:
    """One preference: for ``prompt``, ``chosen`` was preferred over ``rejected``."""

    prompt: str
    chosen: str
    rejected: str
    source: str = "simulated"  # or "human"


# --------------------------------------------------------------------------------------------
# Simulated comparisons, kept together by prompt.
# --------------------------------------------------------------------------------------------

def make_comparisons(prompts: list[str], responses_per_prompt: list[list[str]], labeler,
                     ended_per_prompt: list[list[bool]] | None = None) -> list[Comparison]:
    """Every pair of the K responses to each prompt, labelled by ``labeler``, grouped by prompt.

    A prompt with K distinct responses gives K·(K-1)/2 comparisons; a pair of identical
    responses is skipped (there is nothing to prefer). ``ended_per_prompt`` mirrors
    ``responses_per_prompt`` and marks responses cut off by the token limit (default: none).
    """
    if len(prompts) != len(responses_per_prompt):
        raise ValueError(f"{len(prompts)} prompts but {len(responses_per_prompt)} lists of responses.")
    ended_per_prompt = ended_per_prompt or [[True] * len(rs) for rs in responses_per_prompt]
    comparisons = []
    for prompt, responses, ended in zip(prompts, responses_per_prompt, ended_per_prompt):
        for i in range(len(responses)):
            for j in range(i + 1, len(responses)):
                a, b = responses[i], responses[j]
                if a == b:
                    continue
                choice = labeler.compare(prompt, a, b, ended=(ended[i], ended[j]))
                chosen, rejected = (a, b) if choice == 0 else (b, a)
                comparisons.append(Comparison(prompt, chosen, rejected, "simulated"))
    return comparisons


def split_by_prompt(comparisons: list[Comparison], heldout_fraction: float,
                    seed: int = 0) -> tuple[list[Comparison], list[Comparison]]:
    """``(train, heldout)``: a random ``heldout_fraction`` of the *prompts* (at least one, and at
    least one left for training) with all their comparisons go to ``heldout``.

    No prompt appears on both sides, and each side keeps the order of ``comparisons``.
    """
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must lie strictly between 0 and 1, got {heldout_fraction}.")
    prompts = list(dict.fromkeys(c.prompt for c in comparisons))  # distinct, in order of appearance
    if len(prompts) < 2:
        raise ValueError(f"Splitting by prompt needs at least 2 distinct prompts, got {len(prompts)}.")
    random.Random(seed).shuffle(prompts)  # a private generator: the global one is never touched
    n_heldout = min(len(prompts) - 1, max(1, round(heldout_fraction * len(prompts))))
    heldout_prompts = set(prompts[:n_heldout])
    train = [c for c in comparisons if c.prompt not in heldout_prompts]
    heldout = [c for c in comparisons if c.prompt in heldout_prompts]
    return train, heldout


def gold_agreement(comparisons: list[Comparison]) -> float:
    """The fraction of comparisons whose chosen response has the higher gold utility.

    Pairs that tie in gold utility are left out. For simulated labels this measures the labeler's
    noise; for your own labels it measures how close your taste is to the course's gold one.
    """
    from rlhf_helpers.labeler import gold_utility

    differences = [gold_utility(c.prompt, c.chosen) - gold_utility(c.prompt, c.rejected) for c in comparisons]
    decided = [d for d in differences if d != 0]
    if not decided:
        raise ValueError("No comparison has a gold ordering (all tie, or there are none).")
    return sum(d > 0 for d in decided) / len(decided)


# --------------------------------------------------------------------------------------------
# trl's dataset format.
# --------------------------------------------------------------------------------------------

def to_preference_row(comparison: Comparison) -> dict:
    """One comparison as a conversational preference example with an explicit prompt."""
    return {"prompt": [{"role": "user", "content": comparison.prompt}],
            "chosen": [{"role": "assistant", "content": comparison.chosen}],
            "rejected": [{"role": "assistant", "content": comparison.rejected}]}


def to_preference_dataset(comparisons: list[Comparison]):
    """A ``datasets.Dataset`` with columns prompt, chosen, rejected, ready for ``RewardTrainer``
    or ``DPOTrainer`` (trl applies the chat template; ``source`` is not a column)."""
    from datasets import Dataset

    if not comparisons:
        raise ValueError("No comparisons to turn into a dataset.")
    return Dataset.from_list([to_preference_row(c) for c in comparisons])


# --------------------------------------------------------------------------------------------
# Your own labels: an append-only JSONL file.
# --------------------------------------------------------------------------------------------

def labels_path() -> Path:
    """Where the labelling widget keeps your answers: ``my_labels.jsonl`` in the artifacts folder."""
    from rlhf_helpers.artifacts import artifacts_dir

    return artifacts_dir() / "my_labels.jsonl"


def row_problem(row) -> str | None:
    """What is wrong with one parsed row of the labels file, or None if it is a good row."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    missing = [name for name in LABEL_FIELDS if name not in row]
    if missing:
        return "missing field(s) " + ", ".join(repr(name) for name in missing)
    wrong_type = [name for name in ("prompt", "a", "b") if not isinstance(row[name], str)]
    if wrong_type:
        return "field(s) " + ", ".join(repr(name) for name in wrong_type) + " must be text"
    if row["choice"] not in CHOICES:
        return f"choice {row['choice']!r} is not one of " + ", ".join(repr(c) for c in CHOICES)
    return None


def append_label(path: Path | str, record: dict) -> None:
    """Add one answer as the last line of the labels file, and make sure it reached the disk.

    The file is only ever appended to (created with its folder if needed), so a crash or a
    closed notebook loses at most the answer being written. ``record`` needs ``prompt``, ``a``,
    ``b`` and ``choice`` (one of ``CHOICES``); ``time`` (when you answered) is added if missing.
    """
    if problem := row_problem(record):
        raise ValueError(f"Not a label: {problem}.")
    record = {**record, "time": record.get("time", time.strftime("%Y-%m-%dT%H:%M:%S"))}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:  # an earlier line left unfinished (say, by a crash): start a new one
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())  # on the disk, not only in the operating system's buffers


@dataclass
class LabelsReport:
    """What ``load_labels`` found: the comparisons, how many ties and skips, and bad rows."""

    comparisons: list[Comparison] = field(default_factory=list)
    ties: int = 0
    skips: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.comparisons)} comparisons, {self.ties} ties, {self.skips} skipped, "
                f"{len(self.problems)} bad rows")


def load_labels(path: Path | str) -> LabelsReport:
    """Read the labels file without changing it; a missing file gives an empty report.

    Each good row with choice "a" or "b" becomes a ``Comparison`` (source "human"); "tie" and
    "skip" are counted but give no comparison (a tie says nothing about which is better). A bad
    row is reported as "line N: what is wrong", and every other row still loads.
    """
    report = LabelsReport()
    path = Path(path)
    if not path.exists():
        return report
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.split("\n"), start=1):  # "\n" only: JSON escapes it in text
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            report.problems.append(f"line {number}: not valid JSON ({err.msg.removesuffix(' at')}, column {err.colno})")
            continue
        if problem := row_problem(row):
            report.problems.append(f"line {number}: {problem}")
        elif row["choice"] == "tie":
            report.ties += 1
        elif row["choice"] == "skip":
            report.skips += 1
        else:
            chosen, rejected = (row["a"], row["b"]) if row["choice"] == "a" else (row["b"], row["a"])
            report.comparisons.append(Comparison(row["prompt"], chosen, rejected, "human"))
    return report
