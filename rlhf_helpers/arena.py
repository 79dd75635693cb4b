"""The evaluation arena (lesson 07): every model of the course on the same held-out prompts.

Two kinds of evaluation, as in practice:

- **Metrics** of each model's answers: the gold utility (the hidden "human" of lesson 05), the
  reward model's normalised score, the KL divergence from the SFT model, the instruction-following
  rate, distinct-1 and distinct-2 (how varied the answers are), and the length in tokens. The KL is
  measured by scoring each sampled answer under the model and under the SFT model:
  ``KL ≈ mean over answers of sum over tokens of (log pi(y_t) - log pi_sft(y_t))``
  (``rlhf.evaluate`` does the sampling and the scoring).
- **Battles**, in the style of Chatbot Arena (Zheng et al., 2023): two models answer the same
  prompt, a judge (here the simulated labeler of lesson 05, noise and all) picks the better
  answer, and the verdicts become pairwise **win rates** and **Elo ratings**.

The Elo ratings are *online* Elo, as in Chatbot Arena's first leaderboard: every model starts at
1000; after each battle the winner takes ``K * (S - E)`` points from the loser, where ``S`` is the
actual score (1, 0.5 or 0) and ``E = 1 / (1 + 10 ** ((R_b - R_a) / 400))`` the expected one.
Online Elo depends on the order of the battles, so we replay them in several random orders and
average the ratings (a small K, 4, keeps late battles from counting more than early ones). The
sum of the ratings never changes: Elo only moves points between players. Chatbot Arena later
switched to a Bradley-Terry fit, which does not depend on the order; with many battles and a small
K the two agree closely.

Everything about ratings and rates is a pure function of a list of battles, so it is unit-tested.

**Intervals.** The 400 prompts of the evaluation protocol are a sample, so every figure carries noise. A model's gain over
SFT is a *paired* bootstrap over prompts (``gain_over``: both answered the same prompts, so what
the prompts have in common cancels), and a rating's interval resamples whole prompts with their
battles and replays them (``elo_intervals``). Two models are ranked only where the interval of
their difference (or their rating intervals) separate.

Left out: position bias of the judge, style control, and sampling several answers per prompt.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

from rlhf_helpers import labeler, stats

INITIAL_RATING = 1000.0
ELO_SCALE = 400.0  # a 400-point gap means odds of 10 to 1
ELO_K = 4.0
ELO_PERMUTATIONS = 100
ARENA_VERSION = 1
ARENA_SEED = 0
OUTCOMES = ("a", "b", "tie")


class Battle(NamedTuple):
    """One judged comparison: ``model_a`` and ``model_b`` answered ``prompt``; ``winner`` is
    ``"a"``, ``"b"`` or ``"tie"``."""

    model_a: str
    model_b: str
    winner: str
    prompt: str = ""


# --------------------------------------------------------------------------------------------
# Pure functions: Elo, win rates, distinct-n
# --------------------------------------------------------------------------------------------

def expected_score(rating_a: float, rating_b: float, scale: float = ELO_SCALE) -> float:
    """The score Elo expects ``a`` to get against ``b``: ``1 / (1 + 10 ** ((R_b - R_a) / scale))``."""
    return 1.0 / (1.0 + 10.0 ** ((rating_b - rating_a) / scale))


def actual_score(winner: str) -> float:
    """``a``'s score in one battle: 1 for a win, 0.5 for a tie, 0 for a loss."""
    if winner not in OUTCOMES:
        raise ValueError(f"winner must be one of {OUTCOMES}, got {winner!r}.")
    return {"a": 1.0, "b": 0.0, "tie": 0.5}[winner]


def elo_update(rating_a: float, rating_b: float, winner: str, k: float = ELO_K,
               scale: float = ELO_SCALE) -> tuple[float, float]:
    """The two ratings after one battle: ``a`` gains ``k * (S - E)`` and ``b`` loses as much."""
    change = k * (actual_score(winner) - expected_score(rating_a, rating_b, scale))
    return rating_a + change, rating_b - change


def online_elo(battles: list[Battle], models: list[str] | None = None, k: float = ELO_K,
               initial: float = INITIAL_RATING, scale: float = ELO_SCALE) -> dict[str, float]:
    """Online Elo over ``battles`` in the order given; every model starts at ``initial``."""
    names = list(models) if models is not None else sorted({m for b in battles for m in (b.model_a, b.model_b)})
    ratings = dict.fromkeys(names, float(initial))
    for b in battles:
        ratings[b.model_a], ratings[b.model_b] = elo_update(ratings[b.model_a], ratings[b.model_b], b.winner, k, scale)
    return ratings


def elo_ratings(battles: list[Battle], models: list[str] | None = None, k: float = ELO_K,
                permutations: int = ELO_PERMUTATIONS, seed: int = ARENA_SEED, initial: float = INITIAL_RATING,
                scale: float = ELO_SCALE) -> dict[str, float]:
    """Online Elo averaged over ``permutations`` random orders of the battles (a private generator).

    Averaging removes most of online Elo's dependence on the order; the mean rating stays ``initial``.
    """
    names = list(models) if models is not None else sorted({m for b in battles for m in (b.model_a, b.model_b)})
    rng = random.Random(seed)
    totals = dict.fromkeys(names, 0.0)
    order = list(battles)
    for _ in range(max(1, permutations)):
        rng.shuffle(order)
        for name, rating in online_elo(order, names, k, initial, scale).items():
            totals[name] += rating
    return {name: total / max(1, permutations) for name, total in totals.items()}


def win_counts(battles: list[Battle], models: list[str]) -> tuple[dict, dict]:
    """``(wins, ties)``: ``wins[a][b]`` battles ``a`` won against ``b``; ``ties[a][b]`` (symmetric)."""
    wins = {a: dict.fromkeys(models, 0) for a in models}
    ties = {a: dict.fromkeys(models, 0) for a in models}
    for b in battles:
        if b.winner == "tie":
            ties[b.model_a][b.model_b] += 1
            ties[b.model_b][b.model_a] += 1
        elif b.winner == "a":
            wins[b.model_a][b.model_b] += 1
        else:
            wins[b.model_b][b.model_a] += 1
    return wins, ties


def win_rate_matrix(battles: list[Battle], models: list[str]) -> dict[str, dict[str, float | None]]:
    """``rate[a][b]``: the fraction of decided battles between ``a`` and ``b`` that ``a`` won.

    Ties are left out, so ``rate[a][b] + rate[b][a] == 1`` for every pair that met; ``None`` on the
    diagonal and for pairs with no decided battle.
    """
    wins, _ = win_counts(battles, models)
    rate = {a: dict.fromkeys(models) for a in models}
    for a, b in itertools.permutations(models, 2):
        decided = wins[a][b] + wins[b][a]
        rate[a][b] = wins[a][b] / decided if decided else None
    return rate


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct-n (Li et al., 2016): distinct n-grams of words over all n-grams, over every text.

    1.0 when no n-gram repeats anywhere; near 0 when every answer says the same thing. Words are
    lower-cased runs of letters; texts shorter than ``n`` words add nothing; no n-grams at all: 0.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    grams = [tuple(words[i:i + n]) for words in map(labeler._words, texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def replay_elo(a: "np.ndarray", b: "np.ndarray", score_a: "np.ndarray", n_models: int, k: float = ELO_K,
               initial: float = INITIAL_RATING, scale: float = ELO_SCALE) -> "np.ndarray":
    """Online Elo for many battle sequences at once: ``online_elo``, vectorised over rows.

    ``a``, ``b`` (model numbers) and ``score_a`` (1, 0.5, 0) have one row per sequence and one column
    per battle; returns the ratings, ``(rows, n_models)``. The update is ``elo_update``'s, applied to
    every row at each step: the bootstrap replays thousands of sequences, too many for a Python loop.
    """
    import numpy as np

    ratings = np.full((a.shape[0], n_models), float(initial))
    rows = np.arange(a.shape[0])
    for t in range(a.shape[1]):
        ra, rb = ratings[rows, a[:, t]], ratings[rows, b[:, t]]
        change = k * (score_a[:, t] - 1.0 / (1.0 + 10.0 ** ((rb - ra) / scale)))
        ratings[rows, a[:, t]] += change
        ratings[rows, b[:, t]] -= change
    return ratings


def elo_intervals(battles: list[Battle], models: list[str], resamples: int = 500, orders: int = 10,
                  k: float = ELO_K, seed: int = ARENA_SEED, level: float = stats.LEVEL) -> dict[str, stats.Interval]:
    """Each model's ``elo_ratings`` with a bootstrap interval over prompts.

    Each resample draws the prompts with replacement, takes every battle on the drawn prompts, and
    replays them in ``orders`` random orders, averaged: the same estimator as ``elo_ratings``, on
    resampled prompts. Battles need their ``prompt``; every prompt must have as many battles.
    """
    import numpy as np

    estimate = elo_ratings(battles, models, k, seed=seed)
    ids, draws = stats.group_draws([battle.prompt for battle in battles], resamples=resamples, seed=seed)
    if len(set(np.bincount(ids))) != 1:
        raise ValueError("elo_intervals needs as many battles on every prompt (every pair of models, once).")
    number = {name: i for i, name in enumerate(models)}
    by_group = np.argsort(ids, kind="stable").reshape(draws.shape[1], -1)  # battle indices, one row per prompt
    a = np.array([number[battle.model_a] for battle in battles])
    b = np.array([number[battle.model_b] for battle in battles])
    score = np.array([actual_score(battle.winner) for battle in battles])
    chosen = by_group[draws].reshape(resamples, -1).repeat(orders, axis=0)  # each resample, ``orders`` times
    rng = np.random.default_rng(seed)
    order = rng.permuted(chosen, axis=1)
    ratings = replay_elo(a[order], b[order], score[order], len(models), k).reshape(resamples, orders, -1).mean(1)
    return {name: stats.interval(estimate[name], ratings[:, i], level) for i, name in enumerate(models)}


def per_prompt(results: dict, name: str, metric: str = "gold") -> list[float]:
    """One arena model's value on each prompt: its answer's gold utility (``"gold"``) or 1.0 / 0.0
    for whether it follows the instruction (``"following"``)."""
    from rlhf_helpers import instructions

    prompts, answers, ended = results["prompts"], results["answers"][name], results["ended"][name]
    if metric == "gold":
        return labeler.gold_utilities(prompts, answers, ended)
    if metric == "following":
        return [float(instructions.follows(p, a)) for p, a in zip(prompts, answers)]
    raise ValueError(f"metric must be 'gold' or 'following', got {metric!r}")


def gain_over(results: dict, name: str, baseline: str = "sft", metric: str = "gold") -> stats.Interval:
    """``name``'s mean ``metric`` minus ``baseline``'s on the same prompts, with a paired bootstrap interval."""
    return stats.paired_difference(per_prompt(results, name, metric), per_prompt(results, baseline, metric),
                                   results["prompts"])


# --------------------------------------------------------------------------------------------
# Judging real answers
# --------------------------------------------------------------------------------------------

def judge_battles(prompts: list[str], answers: dict[str, list[str]], ended: dict[str, list[bool]],
                  judge: labeler.SimulatedLabeler, seed: int = ARENA_SEED) -> list[Battle]:
    """Every pair of models on every prompt, judged by ``judge``; which model is shown as ``a`` is random.

    A pair whose gold utilities are exactly equal is a tie (the labeler has no preference, as in
    lesson 05); otherwise the labeler's noisy verdict decides.
    """
    rng = random.Random(seed)
    battles = []
    for i, prompt in enumerate(prompts):
        for x, y in itertools.combinations(list(answers), 2):
            a, b = (x, y) if rng.random() < 0.5 else (y, x)
            ra, rb, ea, eb = answers[a][i], answers[b][i], ended[a][i], ended[b][i]
            if labeler.gold_utility(prompt, ra, ended=ea) == labeler.gold_utility(prompt, rb, ended=eb):
                winner = "tie"
            else:
                winner = "ab"[judge.compare(prompt, ra, rb, ended=(ea, eb))]
            battles.append(Battle(a, b, winner, prompt))
    return battles


def metrics(evaluation: dict) -> dict:
    """One model's row of the arena table from an ``rlhf.evaluate`` result (rows included)."""
    texts = [row["response"] for row in evaluation["rows"]]
    return {"gold": evaluation["gold"], "score": evaluation["score"], "kl": evaluation["kl"],
            "following": evaluation["following"], "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
            "length": evaluation["length"], "end_rate": evaluation["end_rate"]}


# --------------------------------------------------------------------------------------------
# The ``arena`` artifact: every model's answers, metrics and battles
# --------------------------------------------------------------------------------------------

MODELS = ("base", "sft", "ppo", "dpo", "grpo", "grpo_rule")


def load_models(names=MODELS) -> dict:
    """``{name: (model, tokenizer)}`` for the arena, each loaded (and built if missing) from its artifact.

    ``base`` is the model SFT started from: the course's base GPT, or the ``--model`` one."""
    from rlhf_helpers import beyond_ppo, models, rlhf, sft

    loaders = {"base": models.load_start_model, "sft": sft.load_sft_model, "ppo": rlhf.load_ppo_policy,
               "dpo": beyond_ppo.load_dpo_model, "grpo": lambda: beyond_ppo.load_grpo_model("model"),
               "grpo_rule": lambda: beyond_ppo.load_grpo_model("rule")}
    return {name: loaders[name]() for name in names}


def arena_config(profile=None) -> dict:
    """What the ``arena`` artifact depends on: every model's artifact and the arena's sizes."""
    from rlhf_helpers import beyond_ppo, evaluation, rlhf
    from rlhf_helpers.env import get_profile

    profile = profile or get_profile()
    return {"beyond": beyond_ppo.beyond_config(profile), "ppo": rlhf.ppo_artifact_config(profile),
            "ppo_sizes": asdict(profile.ppo), "evaluation": evaluation.protocol(profile), "models": list(MODELS),
            "elo_k": ELO_K, "permutations": ELO_PERMUTATIONS, "seed": ARENA_SEED, "version": ARENA_VERSION}


def run_arena(models: dict, prompts: list[str], progress=None) -> dict:
    """Sample, measure and judge: ``{"table", "ratings", "win_rates", "battles", "answers", "seconds"}``."""
    from rlhf_helpers import reward, rlhf
    from rlhf_helpers.env import get_profile

    start = time.perf_counter()
    config = rlhf.ppo_config(get_profile().ppo)  # judged as lesson 06 judged (the evaluation protocol)
    judge = rlhf.load_judge()
    sft_model = models["sft"][0]
    if progress is not None:
        progress.reset(total=len(models) + 1)
    table, answers, ended = {}, {}, {}
    for name, (model, tokenizer) in models.items():
        evaluation = rlhf.evaluate(model, tokenizer, prompts, config, ref_model=sft_model if name != "sft" else model,
                                   **judge)
        table[name] = metrics(evaluation)
        answers[name] = [row["response"] for row in evaluation["rows"]]
        ended[name] = [row["ended"] for row in evaluation["rows"]]
        if progress is not None:
            progress.update()
    labels = reward.comparison_info()["tau"]
    battles = judge_battles(prompts, answers, ended, labeler.SimulatedLabeler(tau=labels, seed=ARENA_SEED))
    names = list(models)
    result = {"table": table, "ratings": elo_ratings(battles, names), "win_rates": win_rate_matrix(battles, names),
              "battles": [b._asdict() for b in battles], "prompts": prompts, "answers": answers, "ended": ended,
              "tau": labels, "seconds": round(time.perf_counter() - start, 1)}
    if progress is not None:
        progress.update()
    return result


def _build_arena(folder: Path, progress) -> None:
    from rlhf_helpers import evaluation
    from rlhf_helpers.env import get_profile

    result = run_arena(load_models(), evaluation.prompts(get_profile().eval_prompts), progress)
    (folder / "arena.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))


def arena_path() -> Path:
    """The folder of the ``arena`` artifact (every model answers every held-out prompt, if missing)."""
    from rlhf_helpers import artifacts

    return artifacts.fetch("arena", arena_config(), _build_arena, made_by="lesson 07 (rlhf_helpers.arena)")


def load_arena() -> dict:
    """The arena's results; ``battles`` come back as ``Battle`` tuples."""
    result = json.loads((arena_path() / "arena.json").read_text())
    result["battles"] = [Battle(**b) for b in result["battles"]]
    return result
