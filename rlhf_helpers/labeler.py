"""The human of lesson 05: a hidden gold utility, and a simulated labeler that is noisy about it.

RLHF learns from people comparing two responses. We cannot ship people with the course, so we
write their taste down as a function, the *gold utility* ``U(prompt, response)``, and hide it
behind a labeler that only ever says "I prefer A" or "I prefer B". Because we know ``U`` we can
then measure what real RLHF can never measure exactly: how far a reward model, or a policy
trained against it, is from what the "person" actually wanted.

The gold utility, term by term (each term's contribution is its weight times its value)::

    U =  1.0 * follows       1 if the response obeys the instruction (``instructions.follows``)
       + 0.5 * tone          net cheerful words, clipped into [-1, 1]
       + 1.0 * unended       -1 if generation was cut off before the response ended
       + 0.5 * length        0 for a full line (40-120 characters), down to -1 for none or far too long
       + 1.0 * repetition    minus the fraction of repeated word pairs ("love love love" -> -0.5)

so U lies in [-3, 1.5]. A kind, full line that does what was asked scores 1.25 or 1.5; a degenerate,
cut-off ramble scores below zero.

The labeler follows the Bradley-Terry model: it prefers ``a`` with probability
``sigmoid((U(a) - U(b)) / tau)``. A small ``tau`` is a careful labeler who almost always agrees
with the gold ordering; a large one is a coin toss. Real labelers agree with each other roughly
70-80 % of the time, so ``calibrate_tau`` picks the ``tau`` that gives such an agreement.

Left out: labelers who differ from each other, labelers who tire, and any judgement of meaning
(a line "about" love only has to contain the word).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from rlhf_helpers import instructions, words

# --------------------------------------------------------------------------------------------
# The taste: two small lexicons and the weights of each term.
# --------------------------------------------------------------------------------------------

# Written for this course from words common in the plays; lower case, matched as whole words
# (so "love's" counts as "love", but "lovely" does not). Neither list claims to be complete.
POSITIVE_WORDS = frozenset({
    "love", "loving", "joy", "joyful", "sweet", "gentle", "fair", "kind", "merry", "happy",
    "bless", "blessed", "grace", "gracious", "hope", "smile", "music", "peace", "friend",
    "friends", "dear", "delight", "glad", "laugh", "mercy", "honest", "true", "beauty",
    "comfort", "heaven", "welcome", "thanks",
})
NEGATIVE_WORDS = frozenset({
    "death", "dead", "die", "hate", "curse", "cursed", "blood", "bloody", "kill", "villain",
    "plague", "grief", "woe", "murder", "foul", "vile", "poison", "hell", "damned", "traitor",
    "sorrow", "tears", "weep", "fear", "rage", "wicked", "slave", "devil", "wretch", "shame",
    "revenge", "war",
})

W_FOLLOWS = 1.0      # doing what was asked matters most
W_TONE = 0.5         # a kind, cheerful line is nicer, but not at the price of obeying
W_UNENDED = 1.0      # a response cut off mid-way is as bad as ignoring the instruction
W_LENGTH = 0.5       # too short or too long
W_REPETITION = 1.0   # "the king the king the king": the classic failure of a small model
WEIGHTS = {"follows": W_FOLLOWS, "tone": W_TONE, "unended": W_UNENDED,
           "length": W_LENGTH, "repetition": W_REPETITION}

FULL_CHARS = 40      # a full line: shorter answers lose a little (``length_penalty``)
TONE_SATURATION = 2  # two more cheerful than gloomy words already earn the whole tone term
DEFAULT_TAU = 0.5    # a starting point only: lesson 05 calibrates tau with ``calibrate_tau``

_words = words.pieces  # lower-case runs of letters: "Love's labour, lost!" -> love, s, labour, lost


# --------------------------------------------------------------------------------------------
# The terms of the gold utility, one function each.
# --------------------------------------------------------------------------------------------

def tone_score(prompt: str, response: str) -> float:
    """Cheerful minus gloomy words, divided by ``TONE_SATURATION`` and clipped into [-1, 1].

    The word the instruction asks for never counts: asked for a line about death, saying
    "death" is obedience, not gloom.
    """
    asked = instructions.parse_prompt(prompt).topic  # "" for the continue family: matches no word
    words = [w for w in _words(response) if w != asked]
    net = sum(w in POSITIVE_WORDS for w in words) - sum(w in NEGATIVE_WORDS for w in words)
    return max(-1.0, min(1.0, net / TONE_SATURATION))


def length_penalty(response: str) -> float:
    """0 for a full line of ``FULL_CHARS`` to ``MAX_CHARS`` characters. A shorter answer loses the
    fraction of ``FULL_CHARS`` it lacks (a scrap of 10 characters -0.75, an empty answer -1); a
    longer one, the excess as a fraction of ``MAX_CHARS``, at most -1.

    The labeler prefers a full line to a scrap, a little: with the term's weight, a 30-character
    answer costs 0.125. Because the term moves with every character, two answers rarely tie.
    """
    n = len(response.strip())
    if n < FULL_CHARS:
        return -(FULL_CHARS - n) / FULL_CHARS
    if n > instructions.MAX_CHARS:
        return -min(1.0, (n - instructions.MAX_CHARS) / instructions.MAX_CHARS)
    return 0.0


def repetition_penalty(response: str) -> float:
    """Minus the fraction of word pairs (bigrams) that repeat an earlier pair.

    "love love love" has pairs (love, love) twice: one of two repeats, so -0.5. A normal line
    repeats no pair and scores 0; "the king the king the king ..." tends to -1.
    """
    words = _words(response)
    pairs = list(zip(words, words[1:]))
    if not pairs:
        return 0.0
    return len(set(pairs)) / len(pairs) - 1


def utility_terms(prompt: str, response: str, ended: bool = True) -> dict[str, float]:
    """Each term's contribution (weight times value) to the gold utility; they sum to it.

    ``ended`` is False when generation stopped at its token limit instead of at the end token.
    A prompt that is not a course instruction raises ``ValueError``.
    """
    values = {
        "follows": float(instructions.follows(prompt, response)),
        "tone": tone_score(prompt, response),
        "unended": 0.0 if ended else -1.0,
        "length": length_penalty(response),
        "repetition": repetition_penalty(response),
    }
    return {name: WEIGHTS[name] * value for name, value in values.items()}


def gold_utility(prompt: str, response: str, *, ended: bool = True) -> float:
    """The hidden taste ``U(prompt, response)``: the sum of ``utility_terms``."""
    return sum(utility_terms(prompt, response, ended).values())


def gold_utilities(prompts: list[str], responses: list[str], ended: list[bool] | None = None) -> list[float]:
    """``gold_utility`` of each (prompt, response) pair; ``ended`` defaults to all True."""
    ended = [True] * len(prompts) if ended is None else ended
    if not len(prompts) == len(responses) == len(ended):
        raise ValueError(f"{len(prompts)} prompts, {len(responses)} responses and {len(ended)} "
                         "ended flags: they must pair up.")
    return [gold_utility(p, r, ended=e) for p, r, e in zip(prompts, responses, ended)]


def mean_utility_terms(prompts: list[str], responses: list[str], ended: list[bool]) -> dict[str, float]:
    """The mean contribution of each term of the gold utility (``utility_terms``): which part
    of the hidden taste a policy satisfies, and which it does not."""
    totals = dict.fromkeys(WEIGHTS, 0.0)
    for prompt, response, end in zip(prompts, responses, ended):
        for name, value in utility_terms(prompt, response, end).items():
            totals[name] += value / len(prompts)
    return totals


# --------------------------------------------------------------------------------------------
# The labeler: Bradley-Terry noise on top of the gold utility.
# --------------------------------------------------------------------------------------------

def sigmoid(x: float) -> float:
    """``1 / (1 + exp(-x))``, written so that neither branch can overflow."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


@dataclass
class SimulatedLabeler:
    """A labeler who prefers ``a`` over ``b`` with probability ``sigmoid((U(a) - U(b)) / tau)``.

    It draws from its own ``random.Random(seed)`` (the global generator is never touched), so the
    same labeler asked the same questions in the same order gives the same answers.
    """

    tau: float = DEFAULT_TAU
    seed: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self):
        if not self.tau > 0:
            raise ValueError(f"tau must be positive, got {self.tau}: it is the labeler's noise scale.")
        self.rng = random.Random(self.seed)

    def prob_prefers_a(self, prompt: str, a: str, b: str, *, ended: tuple[bool, bool] = (True, True)) -> float:
        """P(a ≻ b) = sigmoid((U(a) - U(b)) / tau); exactly 0.5 when the utilities tie."""
        difference = gold_utility(prompt, a, ended=ended[0]) - gold_utility(prompt, b, ended=ended[1])
        return sigmoid(difference / self.tau)

    def compare(self, prompt: str, a: str, b: str, *, ended: tuple[bool, bool] = (True, True)) -> int:
        """0 if the labeler prefers ``a``, 1 if it prefers ``b`` (one random draw)."""
        return 0 if self.rng.random() < self.prob_prefers_a(prompt, a, b, ended=ended) else 1


# --------------------------------------------------------------------------------------------
# How often the labeler agrees with the gold ordering, measured and expected.
# --------------------------------------------------------------------------------------------

def utility_differences(triples: list[tuple[str, str, str]]) -> list[float]:
    """``U(a) - U(b)`` for each ``(prompt, a, b)``."""
    return [gold_utility(p, a) - gold_utility(p, b) for p, a, b in triples]


def agreement_with_gold(labeler: SimulatedLabeler, triples: list[tuple[str, str, str]]) -> float:
    """The fraction of ``(prompt, a, b)`` where the labeler picks the response of higher ``U``.

    Pairs whose utilities tie have no gold answer and are left out. Each call draws new labels.
    """
    agree = total = 0
    for (prompt, a, b), difference in zip(triples, utility_differences(triples)):
        if difference == 0:
            continue
        gold_choice = 0 if difference > 0 else 1
        agree += labeler.compare(prompt, a, b) == gold_choice
        total += 1
    if total == 0:
        raise ValueError("Every pair ties in gold utility: there is no gold ordering to agree with.")
    return agree / total


def expected_agreement(differences: list[float], tau: float) -> float:
    """The agreement a Bradley-Terry labeler reaches on average: mean of ``sigmoid(|ΔU| / tau)``.

    This is the labeler's ceiling: no reward model trained on its labels should be expected to
    agree with the gold ordering more often than this on the same kind of pairs. Ties are left
    out, as in ``agreement_with_gold``.
    """
    gaps = [abs(d) for d in differences if d != 0]
    if not gaps:
        raise ValueError("Every difference is zero: there is no gold ordering to agree with.")
    return sum(sigmoid(gap / tau) for gap in gaps) / len(gaps)


def calibrate_tau(differences: list[float], target: float = 0.75) -> float:
    """The ``tau`` whose expected agreement on these utility differences equals ``target``.

    Expected agreement falls from 1 (``tau`` -> 0, a perfect labeler) to 0.5 (``tau`` -> ∞, a coin)
    as ``tau`` grows, so one ``tau`` hits any target strictly between; bisection finds it (in
    log ``tau``, as ``tau`` can span many orders of magnitude).
    """
    if not 0.5 < target < 1:
        raise ValueError(f"target must lie strictly between 0.5 (a coin) and 1 (no noise), got {target}.")
    if not any(d != 0 for d in differences):
        raise ValueError("Every difference is zero: no tau can make a labeler agree with a gold "
                         "ordering that does not exist. Compare responses whose utilities differ.")
    lo, hi = -30.0, 30.0  # log tau, from e^-30 (a perfect labeler) to e^30 (a coin)
    for _ in range(80):  # each step halves the interval: 80 reach float precision
        mid = (lo + hi) / 2
        if expected_agreement(differences, math.exp(mid)) > target:
            lo = mid  # still too careful: more noise
        else:
            hi = mid
    tau = math.exp((lo + hi) / 2)
    if abs(expected_agreement(differences, tau) - target) > 1e-6:  # pinned at an end of the range
        raise ValueError(f"No tau between e^-30 and e^30 gives an agreement of {target} on these differences.")
    return tau
