"""The gold utility and the simulated labeler of lesson 05."""

from __future__ import annotations

import math
import random

import pytest

from rlhf_helpers import instructions as I
from rlhf_helpers import labeler as L

ABOUT_LOVE = "Continue this line about love: Tell me in sadness,"
ABOUT_NIGHT = "Continue this line about night: I will watch"  # "night" is in neither lexicon
ABOUT_DEATH = "Continue this line about death: Tell me in sadness,"
CONTINUE = "Continue this line: Now is the winter"

# Two answers that tie in gold utility under ABOUT_LOVE: each follows (a real-word line holding
# "love", carrying on from "Tell me in sadness,"), has no tone word ("love" is the topic), repeats
# no word pair, and is a full line (45 and 47 characters: length 0). U = 1 + 0 + 0 + 0 + 0 = 1.0 each.
TIE = ("My love is here, and the king is at the gate.", "Your love is here, and the king is at the gate.")


# --------------------------------------------------------------------------------------------
# The gold utility, term by term.
# --------------------------------------------------------------------------------------------

def test_lexicons_are_small_lower_case_and_disjoint():
    for lexicon in (L.POSITIVE_WORDS, L.NEGATIVE_WORDS):
        assert 25 <= len(lexicon) <= 40
        assert all(word.isalpha() and word == word.lower() for word in lexicon)
    assert not L.POSITIVE_WORDS & L.NEGATIVE_WORDS


def test_following_the_instruction_earns_its_weight():
    follows = L.utility_terms(ABOUT_NIGHT, "the king is gone to bed this night.")
    ignores = L.utility_terms(ABOUT_NIGHT, "the king is gone to bed this hour.")  # no topic word
    assert follows["follows"] == L.W_FOLLOWS and ignores["follows"] == 0.0
    assert L.utility_terms(CONTINUE, "of our discontent made glorious.")["follows"] == L.W_FOLLOWS
    assert L.utility_terms(CONTINUE, "Now is the winter of our discontent.")["follows"] == 0.0  # an echo
    assert L.utility_terms(CONTINUE, "of our cruchow and cretful.")["follows"] == 0.0  # invented words


def test_tone_rewards_cheerful_words_and_penalises_gloomy_ones():
    assert L.tone_score(ABOUT_NIGHT, "The king is in the hall today.") == 0.0
    assert L.tone_score(ABOUT_NIGHT, "The king is a gentle man.") == 0.5
    assert L.tone_score(ABOUT_NIGHT, "The sweet king, in joy and peace.") == 1.0  # clipped at 1
    assert L.tone_score(ABOUT_NIGHT, "The king is a villain.") == -0.5
    assert L.tone_score(ABOUT_NIGHT, "Death and blood upon the cursed king.") == -1.0  # clipped at -1
    assert L.tone_score(ABOUT_NIGHT, "A gentle king, a foul deed.") == 0.0  # one of each cancels
    assert L.tone_score(ABOUT_NIGHT, "The king is lovely and murderous.") == 0.0  # whole words only
    assert L.tone_score(ABOUT_NIGHT, "Love's KING.") == 0.5  # case and possessives
    assert L.utility_terms(ABOUT_NIGHT, "The king is a gentle man.")["tone"] == L.W_TONE * 0.5


def test_the_word_asked_for_is_not_tone():
    assert L.tone_score(ABOUT_DEATH, "Death comes to all at last.") == 0.0
    assert L.tone_score(ABOUT_DEATH, "Death comes to the wicked.") == -0.5  # "wicked" still counts
    assert L.tone_score(ABOUT_NIGHT, "Death comes to all at last.") == -0.5  # not asked for: gloom
    assert L.tone_score(CONTINUE, "Death comes to all at last.") == -0.5  # continue asks for no word
    assert L.tone_score(ABOUT_LOVE, "my love is sweet.") == 0.5  # "love" is obedience, "sweet" is tone


def test_an_unended_response_loses_a_full_point():
    line = "The king is gone to the wars today."
    assert L.utility_terms(ABOUT_NIGHT, line)["unended"] == 0.0
    assert L.utility_terms(ABOUT_NIGHT, line, ended=False)["unended"] == -L.W_UNENDED
    assert L.gold_utility(ABOUT_NIGHT, line) - L.gold_utility(ABOUT_NIGHT, line, ended=False) == pytest.approx(1.0)


def test_length_penalty_is_zero_in_the_sane_range_and_grows_outside():
    full = "The king is gone to the wars today, sir."  # 40 characters: the shortest full line
    # a full line, 40 to 120 characters, costs nothing
    assert L.length_penalty(full) == 0.0  # 40 chars: 0
    assert L.length_penalty("k" * 80) == 0.0  # 80 chars: 0
    assert L.length_penalty("k" * 120) == 0.0  # 120 chars: 0, the longest full line
    # shorter: the fraction of 40 it lacks
    assert L.length_penalty(full[:-1]) == pytest.approx(-0.025)  # 39 chars: -(40-39)/40 = -0.025
    assert L.length_penalty("k" * 30) == pytest.approx(-0.25)  # 30 chars: -(40-30)/40 = -0.25
    assert L.length_penalty("The king is here.") == pytest.approx(-0.575)  # 17 chars: -(40-17)/40 = -0.575
    assert L.length_penalty("King Lear.") == pytest.approx(-0.75)  # 10 chars: -(40-10)/40 = -0.75
    assert L.length_penalty("King.") == pytest.approx(-0.875)  # 5 chars: -(40-5)/40 = -0.875
    assert L.length_penalty("") == -1.0  # 0 chars: -(40-0)/40 = -1
    # longer: the excess as a fraction of 120, capped at -1
    assert L.length_penalty("k" * 121) == pytest.approx(-1 / 120)  # 121 chars: -(121-120)/120
    assert L.length_penalty("k" * 180) == pytest.approx(-0.5)  # 180 chars: -(180-120)/120 = -0.5
    assert L.length_penalty("k" * 240) == -1.0  # 240 chars: -(240-120)/120 = -1, the cap
    assert L.length_penalty("k" * 10_000) == -1.0  # 10,000 chars: -(9880/120) capped at -1
    # surrounding whitespace is ignored (counted, each of these would land elsewhere)
    assert L.length_penalty("  King Lear. \n") == pytest.approx(-0.75)  # 10 chars, not 14: -(40-10)/40
    assert L.length_penalty("   " + full[:-1] + "\n") == pytest.approx(-0.025)  # 39 chars, not 43: -(40-39)/40
    assert L.length_penalty(" " + "k" * 120 + "\n") == 0.0  # 120 chars, not 122: 0
    # the term enters the utility at weight 0.5
    assert L.utility_terms(ABOUT_NIGHT, "The king is here.")["length"] == pytest.approx(-0.2875)  # 17 chars: -(40-17)/40 * 0.5
    long_line = "The king " + "and the queen " * 12 + "are here."  # 9 + 12 * 14 + 9 = 186 characters
    assert L.utility_terms(ABOUT_NIGHT, long_line)["length"] == pytest.approx(-0.275)  # -(186-120)/120 * 0.5


def test_repetition_penalty_counts_repeated_word_pairs():
    assert L.repetition_penalty("The king is gone to the wars today.") == 0.0
    assert L.repetition_penalty("love love love") == pytest.approx(-0.5)
    assert L.repetition_penalty("love love love love") == pytest.approx(-2 / 3)
    assert L.repetition_penalty("the king the king the king the king") == pytest.approx(-5 / 7)
    assert L.repetition_penalty("love") == 0.0 and L.repetition_penalty("") == 0.0


def test_gold_utility_is_the_sum_of_its_terms_and_prefers_the_good_line():
    good = "my gentle love is fair and true as the day."  # 43 characters: a full line
    degenerate = "love love love love"
    for response in (good, degenerate, "", "Mad world, mad kings!"):
        terms = L.utility_terms(ABOUT_LOVE, response)
        assert set(terms) == set(L.WEIGHTS)
        assert L.gold_utility(ABOUT_LOVE, response) == pytest.approx(sum(terms.values()))
    # good: a real-word continuation holding "love" (follows 1.0); gentle, fair, true are three
    # cheerful words ("love" is the topic, not tone), clipped to 1, times 0.5; 43 characters is a
    # full line (length 0); no repeated pair: 1 + 0.5 + 0 + 0 + 0 = 1.5
    assert L.gold_utility(ABOUT_LOVE, good) == pytest.approx(1.5)
    # the same line one word shorter ("as day.", 39 characters) loses -(40-39)/40 * 0.5 = 0.0125
    assert L.gold_utility(ABOUT_LOVE, "my gentle love is fair and true as day.") == pytest.approx(1.4875)
    # degenerate: it still follows (19 characters of a real word, the topic); no tone (only the
    # topic word); 3 word pairs of which 1 is distinct: repetition 1/3 - 1 = -2/3; 19 characters:
    # length -(40-19)/40 * 0.5 = -0.2625. U = 1 - 2/3 - 0.2625
    assert L.gold_utility(ABOUT_LOVE, degenerate) == pytest.approx(1 - 2 / 3 - 0.2625)
    # empty: does not follow (too short), no tone, no pairs; length -(40-0)/40 * 0.5 = -0.5
    assert L.gold_utility(ABOUT_LOVE, "") == pytest.approx(-0.5)
    assert L.gold_utility(ABOUT_LOVE, good) > L.gold_utility(ABOUT_LOVE, degenerate)
    assert L.gold_utility(ABOUT_LOVE, good, ended=False) < L.gold_utility(ABOUT_LOVE, good)


def test_gold_utilities_pairs_up_and_checks_lengths():
    prompts = [ABOUT_LOVE, ABOUT_NIGHT]
    responses = ["My gentle love is fair.", "The queen sleeps."]
    assert L.gold_utilities(prompts, responses) == [L.gold_utility(p, r) for p, r in zip(prompts, responses)]
    cut_off = L.gold_utilities(prompts, responses, [True, False])[1]
    assert cut_off == L.gold_utility(ABOUT_NIGHT, responses[1], ended=False)
    with pytest.raises(ValueError, match="pair up"):
        L.gold_utilities(prompts, responses[:1])


def test_gold_utility_rejects_a_prompt_that_is_not_an_instruction():
    with pytest.raises(ValueError, match="Not a course instruction"):
        L.gold_utility("Tell me a joke.", "A horse, a horse!")


def test_gold_utility_is_fast():
    import time

    L.gold_utility(ABOUT_LOVE, "my love.")  # builds the corpus's vocabulary once, outside the timing
    start = time.perf_counter()
    for _ in range(2000):
        L.gold_utility(ABOUT_LOVE, "My gentle love is fair and true as day, and sweet.")
    assert time.perf_counter() - start < 1.0  # thousands of calls per second, even on a slow CI box


# --------------------------------------------------------------------------------------------
# The labeler.
# --------------------------------------------------------------------------------------------

_PIECES = ["gentle", "sweet", "villain", "foul", "and the sea", "upon the hill", "is here", "the"]


def _made_up_response(rng: random.Random, word: str) -> str:
    """A short line of random pieces: it may contain ``word``, be kind or gloomy, or repeat itself."""
    words = rng.sample(_PIECES, rng.randint(1, 4))
    if rng.random() < 0.6:
        words.insert(rng.randrange(len(words) + 1), word)
    if rng.random() < 0.2:
        words = words * 3
    return "A " + " ".join(words) + "."


def _triples(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """Random ``(prompt, a, b)`` with a spread of gold utilities."""
    rng = random.Random(seed)
    triples = []
    for _ in range(n):
        topic = rng.choice(["love", "night", "death", "friend"])  # cheerful, neutral, gloomy, cheerful
        prompt = I.about_prompt(topic, "Tell me in sadness,")
        triples.append((prompt, _made_up_response(rng, topic), _made_up_response(rng, topic)))
    return triples


def test_sigmoid_is_stable_at_the_extremes():
    assert L.sigmoid(0) == 0.5
    assert L.sigmoid(1000) == 1.0 and L.sigmoid(-1000) == 0.0
    assert L.sigmoid(2) == pytest.approx(1 / (1 + math.exp(-2)))


def test_labeler_probability_follows_bradley_terry():
    labeler = L.SimulatedLabeler(tau=0.5)
    good, bad = "My gentle love is fair and true.", "The sea is grey."
    difference = L.gold_utility(ABOUT_LOVE, good) - L.gold_utility(ABOUT_LOVE, bad)
    assert labeler.prob_prefers_a(ABOUT_LOVE, good, bad) == pytest.approx(L.sigmoid(difference / 0.5))
    p_good, p_bad = labeler.prob_prefers_a(ABOUT_LOVE, good, bad), labeler.prob_prefers_a(ABOUT_LOVE, bad, good)
    assert p_good > 0.5 and p_good + p_bad == pytest.approx(1)
    assert labeler.prob_prefers_a(ABOUT_LOVE, *TIE) == 0.5  # a tie: U = 1.0 for both (see TIE)
    # no longer a tie: both follow with no tone or repetition, but 16 characters cost
    # -(40-16)/40 * 0.5 = -0.3 (U = 0.7) and 18 cost -(40-18)/40 * 0.5 = -0.275 (U = 0.725):
    # P = sigmoid((0.7 - 0.725) / 0.5) = sigmoid(-0.05)
    assert labeler.prob_prefers_a(ABOUT_LOVE, "My love is here.", "Your love is here.") == pytest.approx(
        1 / (1 + math.exp(0.05)))
    assert labeler.prob_prefers_a(ABOUT_LOVE, good, good, ended=(True, False)) > 0.5


def test_labeler_rejects_a_non_positive_tau():
    with pytest.raises(ValueError, match="tau"):
        L.SimulatedLabeler(tau=0)


def _labels(tau: float, seed: int, triples) -> list[int]:
    labeler = L.SimulatedLabeler(tau=tau, seed=seed)
    return [labeler.compare(*t) for t in triples]


def test_labeler_is_reproducible_and_leaves_the_global_rng_alone():
    triples = _triples(50)
    random.seed(123)
    before = random.getstate()
    first = _labels(1.0, 7, triples)
    assert first == _labels(1.0, 7, triples) and set(first) == {0, 1}
    assert _labels(1.0, 8, triples) != first
    assert random.getstate() == before


def test_ties_are_a_coin_toss():
    labeler = L.SimulatedLabeler(tau=0.01, seed=0)
    choices = [labeler.compare(ABOUT_LOVE, *TIE) for _ in range(2000)]  # U = 1.0 for both (see TIE)
    assert 0.45 < sum(choices) / len(choices) < 0.55


def test_a_careful_labeler_agrees_with_gold_and_a_noisy_one_guesses():
    triples = _triples(2000)
    assert L.agreement_with_gold(L.SimulatedLabeler(tau=1e-3), triples) > 0.99
    assert 0.45 < L.agreement_with_gold(L.SimulatedLabeler(tau=1e3), triples) < 0.55


def test_measured_agreement_matches_the_expected_agreement():
    triples = _triples(4000, seed=1)
    differences = L.utility_differences(triples)
    for tau in (0.2, 0.5, 1.0):
        expected = L.expected_agreement(differences, tau)
        measured = L.agreement_with_gold(L.SimulatedLabeler(tau=tau, seed=3), triples)
        decided = sum(d != 0 for d in differences)
        assert decided > 1000
        assert abs(measured - expected) < 4 * math.sqrt(expected * (1 - expected) / decided)


def test_agreement_needs_a_gold_ordering():
    tie = [(ABOUT_LOVE, *TIE)]  # U = 1.0 for both (see TIE)
    with pytest.raises(ValueError, match="tie"):
        L.agreement_with_gold(L.SimulatedLabeler(), tie)
    with pytest.raises(ValueError, match="zero"):
        L.expected_agreement([0.0, 0.0], tau=1.0)


def test_calibrate_tau_hits_the_target():
    differences = L.utility_differences(_triples(1000, seed=2))
    for target in (0.7, 0.75, 0.8, 0.95):
        tau = L.calibrate_tau(differences, target)
        assert tau > 0 and abs(L.expected_agreement(differences, tau) - target) < 0.01
        measured = L.agreement_with_gold(L.SimulatedLabeler(tau=tau, seed=0), _triples(3000, seed=5))
        assert abs(measured - target) < 0.06  # other pairs of the same kind: close, not exact
    assert L.calibrate_tau(differences, 0.7) > L.calibrate_tau(differences, 0.8)  # more noise, less agreement
    assert L.calibrate_tau([1.0, -1.0, 0.0], 0.75) == pytest.approx(1 / math.log(3))  # sigmoid(1/tau) = 0.75


@pytest.mark.parametrize("differences, target, message", [
    ([0.0, 0.0], 0.75, "zero"),
    ([], 0.75, "zero"),
    ([1.0], 0.5, "between 0.5"),
    ([1.0], 1.0, "between 0.5"),
    ([1.0], 0.3, "between 0.5"),
    ([1e-300], 0.99, "No tau"),
])
def test_calibrate_tau_refuses_unreachable_targets(differences, target, message):
    with pytest.raises(ValueError, match=message):
        L.calibrate_tau(differences, target)
