"""The room's labels: a workshop's preferences pooled, checked and measured (lesson 05, together).

In a workshop every attendee labels pairs in lesson 05's widget, alone. Pooled, those labels let
the room train one reward model on *its* taste, and show what real preference data looks like:
people disagree with each other, and with any "gold" ordering.

- ``export_labels`` copies an attendee's labels file with an anonymous annotator id on each row;
- ``merge`` pools the exported files into one: every good row is kept, a row seen twice (the same
  file sent twice, say: same annotator, answer and time) is counted once, and every bad row is reported by file and
  line and kept, verbatim, in a ``.rejected`` file beside the result: nothing is lost;
- ``room_report`` measures the pool: how often annotators agree with each other on the pairs they
  share (Cohen's kappa for two, Fleiss' kappa for all), and how often each agrees with the hidden
  gold utility and with the simulated labeler of lesson 05.

``RLHF_LABELS=<merged file>`` then trains the reward model, and everything after it, on the room's
labels (see ``reward.labels_file``).

Kappa is agreement corrected for chance: (observed - expected) / (1 - expected), where expected is
the agreement of two annotators answering at random with their own answer frequencies. 1 is
perfect agreement, 0 is chance. Left out: weighting annotators by reliability (Dawid-Skene).
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_helpers import labeler, preferences

ANSWERS = ("first", "second", "tie")  # a label, seen with the pair's two texts in a fixed order


def anonymous_id() -> str:
    """A random annotator id: says nothing about who labelled."""
    return "anon-" + secrets.token_hex(3)


def _rows(path: Path, row_problem=preferences.row_problem) -> list[tuple[int, str, dict | None, str | None]]:
    """``(line number, raw line, row or None, problem or None)`` for each non-empty line."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            out.append((number, line, None, f"not valid JSON ({err.msg})"))
            continue
        problem = row_problem(row)
        out.append((number, line, None if problem else row, problem))
    return out


def _write_atomically(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


def export_labels(source: Path, destination: Path, annotator: str | None = None,
                  row_problem=preferences.row_problem) -> tuple[int, list[str]]:
    """Write ``source``'s good rows to ``destination`` with ``"annotator"`` set on each.

    Returns ``(rows written, problems)``; ``source`` is never changed. ``row_problem`` checks one
    row: labels by default, ``vote_problem`` for arena votes.
    """
    annotator = annotator or anonymous_id()
    rows = _rows(Path(source), row_problem)
    good = [json.dumps({**row, "annotator": annotator}, ensure_ascii=False) for _, _, row, _ in rows if row]
    _write_atomically(Path(destination), good)
    return len(good), [f"line {n}: {problem}" for n, _, _, problem in rows if problem]


@dataclass
class MergeReport:
    """What ``merge`` did: rows kept, duplicates dropped, bad rows (by file and line)."""

    kept: int = 0
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)
    annotators: set[str] = field(default_factory=set)

    def summary(self) -> str:
        return (f"{self.kept} labels from {len(self.annotators)} annotators; {self.duplicates} duplicates "
                f"counted once; {len(self.problems)} bad rows")


def merge(files: list[Path], destination: Path, row_problem=preferences.row_problem) -> MergeReport:
    """Pool exported label files into ``destination`` (see the module docstring).

    A row with no ``annotator`` takes its file's name (``alice.jsonl`` -> ``alice``). The inputs
    are never changed; bad rows go to ``<destination>.rejected`` with their file and line.
    """
    report, seen, merged, rejected = MergeReport(), set(), [], []
    for path in map(Path, files):
        for number, line, row, problem in _rows(path, row_problem):
            if problem:
                report.problems.append(f"{path.name}, line {number}: {problem}")
                rejected.append(json.dumps({"file": str(path), "line": number, "problem": problem, "text": line}))
                continue
            row = {**row, "annotator": str(row.get("annotator") or path.stem)}
            key = json.dumps(row, sort_keys=True)  # the same row delivered twice (say, one file merged twice)
            if key in seen:
                report.duplicates += 1
                continue
            seen.add(key)
            merged.append(json.dumps(row, ensure_ascii=False))
            report.annotators.add(row["annotator"])
    destination = Path(destination)
    _write_atomically(destination, merged)
    rejected_path = destination.with_name(destination.name + ".rejected")
    if rejected:
        _write_atomically(rejected_path, rejected)
    elif rejected_path.exists():
        rejected_path.unlink()  # a rejects file from an earlier merge would describe other inputs
    report.kept = len(merged)
    return report


# --------------------------------------------------------------------------------------------
# Agreement
# --------------------------------------------------------------------------------------------

def _oriented(row: dict) -> tuple[tuple[str, str, str], str] | None:
    """The pair in a fixed order (so A/B swaps match) and the answer in that order; None for a skip."""
    if row["choice"] == "skip":
        return None
    first, second = sorted((row["a"], row["b"]))
    if row["choice"] == "tie":
        return (row["prompt"], first, second), "tie"
    chosen = row["a"] if row["choice"] == "a" else row["b"]
    return (row["prompt"], first, second), "first" if chosen == first else "second"


def answers_by_pair(rows: list[dict]) -> dict[tuple, dict[str, str]]:
    """``{pair: {annotator: answer}}``; an annotator's last answer to a pair counts."""
    table: dict[tuple, dict[str, str]] = defaultdict(dict)
    for row in rows:
        if oriented := _oriented(row):
            pair, answer = oriented
            table[pair][row["annotator"]] = answer
    return table


def cohen_kappa(first: list[str], second: list[str]) -> float:
    """Cohen's kappa of two annotators' answers to the same items, in the same order."""
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second)) / n
    p, q = Counter(first), Counter(second)
    expected = sum(p[c] * q[c] for c in ANSWERS) / n**2
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def fleiss_kappa(items: list[list[str]]) -> float:
    """Fleiss' kappa over items each answered by two or more annotators (numbers may differ).

    Per item, the share of agreeing ordered pairs of annotators; averaged, against the chance
    agreement of the pooled answer frequencies.
    """
    observed = sum(sum(k * (k - 1) for k in Counter(answers).values()) / (len(answers) * (len(answers) - 1))
                   for answers in items) / len(items)
    pooled = Counter(a for answers in items for a in answers)
    total = sum(pooled.values())
    expected = sum((count / total) ** 2 for count in pooled.values())
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


@dataclass
class AnnotatorRow:
    annotator: str
    labels: int
    with_gold: float | None  # share of A/B answers that pick the gold-better text (gold ties left out)
    with_simulated: float | None  # expected agreement with the simulated labeler on those answers


@dataclass
class RoomReport:
    pairs: int
    labels: int
    annotators: list[AnnotatorRow]
    shared_pairs: int  # pairs answered by two annotators or more
    fleiss: float | None
    cohen: dict[tuple[str, str], tuple[float, int]]  # (a, b) -> (kappa, shared pairs)

    def text(self) -> str:
        lines = [f"{self.labels} labels on {self.pairs} pairs by {len(self.annotators)} annotators; "
                 f"{self.shared_pairs} pairs answered by two or more."]
        lines.append(f"{'annotator':>12} {'labels':>7} {'agrees with gold':>17} {'with simulated labeler':>23}")
        for row in self.annotators:
            gold = "-" if row.with_gold is None else f"{row.with_gold:.0%}"
            sim = "-" if row.with_simulated is None else f"{row.with_simulated:.0%}"
            lines.append(f"{row.annotator:>12} {row.labels:>7} {gold:>17} {sim:>23}")
        if self.fleiss is None:
            lines.append("Agreement between annotators: no pair was answered by two annotators yet.")
        else:
            lines.append(f"Fleiss' kappa over the shared pairs: {self.fleiss:.2f} (1 = all agree, 0 = chance)")
            for (a, b), (kappa, n) in sorted(self.cohen.items()):
                lines.append(f"  Cohen's kappa {a} / {b}: {kappa:.2f} on {n} shared pairs")
        return "\n".join(lines)


def _agreement_with_gold(rows: list[dict], tau: float) -> tuple[float | None, float | None]:
    """Share of an annotator's A/B answers that the gold utility agrees with, and the simulated
    labeler's expected agreement with those answers. Gold ties say nothing and are left out."""
    decided = [r for r in rows if r["choice"] in ("a", "b")]
    differences = []
    for r in decided:
        chosen, rejected = (r["a"], r["b"]) if r["choice"] == "a" else (r["b"], r["a"])
        differences.append(labeler.gold_utility(r["prompt"], chosen) - labeler.gold_utility(r["prompt"], rejected))
    informative = [d for d in differences if d != 0]
    if not informative:
        return None, None
    with_gold = sum(d > 0 for d in informative) / len(informative)
    with_simulated = sum(labeler.sigmoid(d / tau) for d in informative) / len(informative)
    return with_gold, with_simulated


def room_report(path: Path, tau: float = labeler.DEFAULT_TAU) -> RoomReport:
    """Measure a merged labels file; bad rows are skipped (``merge`` reported them)."""
    rows = [row for _, _, row, _ in _rows(Path(path)) if row]
    for row in rows:
        row.setdefault("annotator", "unknown")
    by_pair = answers_by_pair(rows)
    by_annotator: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_annotator[row["annotator"]].append(row)
    annotators = [AnnotatorRow(name, len(own), *_agreement_with_gold(own, tau)) for name, own in sorted(by_annotator.items())]
    shared = [answers for answers in by_pair.values() if len(answers) >= 2]
    cohen = {}
    for a, b in itertools.combinations(sorted(by_annotator), 2):
        both = [answers for answers in by_pair.values() if a in answers and b in answers]
        if both:
            cohen[a, b] = (cohen_kappa([x[a] for x in both], [x[b] for x in both]), len(both))
    fleiss = fleiss_kappa([list(answers.values()) for answers in shared]) if shared else None
    return RoomReport(len(by_pair), len(rows), annotators, len(shared), fleiss, cohen)


# --------------------------------------------------------------------------------------------
# Arena votes (lesson 07): the room's blind votes, as a human Elo beside the simulated one.
# --------------------------------------------------------------------------------------------

VOTE_FIELDS = ("model_a", "model_b", "winner", "prompt")


def votes_path() -> Path:
    """Where lesson 07's voting widget appends your votes: ``arena_votes.jsonl`` in the artifacts folder."""
    from rlhf_helpers.artifacts import artifacts_dir

    return artifacts_dir() / "arena_votes.jsonl"


def vote_problem(row) -> str | None:
    """What is wrong with one parsed vote, or None."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    missing = [name for name in VOTE_FIELDS if not isinstance(row.get(name), str)]
    if missing:
        return "missing or non-text field(s) " + ", ".join(repr(name) for name in missing)
    if row["winner"] not in ("a", "b", "tie"):
        return f"winner {row['winner']!r} is not one of 'a', 'b', 'tie'"
    if row["model_a"] == row["model_b"]:
        return "a model cannot battle itself"
    return None


def append_vote(path: Path, battle, annotator: str | None = None) -> None:
    """Append one ``arena.Battle`` as a line of ``path`` (append-only, like the labels file)."""
    record = {"model_a": battle.model_a, "model_b": battle.model_b, "winner": battle.winner,
              "prompt": battle.prompt, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if annotator:
        record["annotator"] = annotator
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


def load_votes(path: Path) -> list:
    """The good votes of a (merged) votes file as ``arena.Battle`` rows; bad rows are skipped."""
    from rlhf_helpers import arena

    return [arena.Battle(r["model_a"], r["model_b"], r["winner"], r["prompt"])
            for _, _, r, _ in _rows(Path(path), vote_problem) if r]


def human_and_simulated_elo(votes_file: Path, simulated_battles: list) -> list[tuple[str, float | None, float, int]]:
    """``(model, human Elo or None, simulated Elo, votes)`` per model, best simulated first.

    Both ratings come from ``arena.elo_ratings`` (online Elo averaged over orderings), so they
    are on one scale; a model nobody voted on has no human rating.
    """
    from rlhf_helpers import arena

    votes = load_votes(votes_file)
    models = sorted({m for b in simulated_battles for m in (b.model_a, b.model_b)})
    simulated = arena.elo_ratings(list(simulated_battles), models)
    counts = Counter(m for b in votes for m in (b.model_a, b.model_b))
    voted = [m for m in models if counts[m]]
    human = arena.elo_ratings([b for b in votes if b.model_a in voted and b.model_b in voted], voted) if votes else {}
    return [(m, human.get(m), simulated[m], counts[m]) for m in sorted(models, key=lambda m: -simulated[m])]
