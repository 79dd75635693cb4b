"""The arena's pure parts: Elo, win rates and distinct-n, on hand-made battles and texts."""

import math
import random

import pytest

from rlhf_helpers import arena, stats
from rlhf_helpers.arena import Battle

ABOUT_LOVE = "Continue this line about love: Tell me in sadness,"
ABOUT_NIGHT = "Continue this line about night: I will watch"


def test_expected_score_formula():
    assert arena.expected_score(1000, 1000) == 0.5
    assert math.isclose(arena.expected_score(1400, 1000), 10 / 11)  # 400 points: odds of 10 to 1
    assert math.isclose(arena.expected_score(1000, 1400), 1 / 11)
    for a, b in [(1200, 950), (800, 1300), (1000, 1001)]:
        assert math.isclose(arena.expected_score(a, b) + arena.expected_score(b, a), 1.0)


def test_one_update_moves_k_times_surprise():
    a, b = arena.elo_update(1000, 1000, "a", k=32)
    assert (a, b) == (1016, 984)
    a, b = arena.elo_update(1000, 1000, "tie", k=32)
    assert (a, b) == (1000, 1000)
    a, b = arena.elo_update(1400, 1000, "b", k=10)
    assert math.isclose(a, 1400 - 10 * 10 / 11) and math.isclose(a + b, 2400)
    with pytest.raises(ValueError):
        arena.elo_update(1000, 1000, "draw")


def test_equal_players_stay_equal():
    battles = [Battle("x", "y", w) for w in ["a", "b"] * 50 + ["tie"] * 10]
    ratings = arena.elo_ratings(battles, ["x", "y"], permutations=50)
    assert abs(ratings["x"] - ratings["y"]) < 2
    assert arena.online_elo([Battle("x", "y", "tie")] * 20) == {"x": 1000.0, "y": 1000.0}


def test_a_player_who_always_wins_rises():
    battles = [Battle("champ", other, "a") for other in ["p", "q"] for _ in range(30)]
    battles += [Battle(other, "champ", "b") for other in ["p", "q"] for _ in range(30)]
    ratings = arena.elo_ratings(battles, ["champ", "p", "q"], k=16, permutations=20)
    assert ratings["champ"] > 1100 and ratings["champ"] > ratings["p"] and ratings["champ"] > ratings["q"]
    history = [1000.0]
    # monotone rise battle after battle
    ratings = {"champ": 1000.0, "p": 1000.0}
    for _ in range(10):
        ratings["champ"], ratings["p"] = arena.elo_update(ratings["champ"], ratings["p"], "a", k=16)
        assert ratings["champ"] > history[-1]
        history.append(ratings["champ"])


def test_online_elo_conserves_the_sum_and_depends_on_order():
    rng = random.Random(0)
    names = ["a", "b", "c", "d"]
    battles = [Battle(*rng.sample(names, 2), rng.choice(["a", "b", "tie"])) for _ in range(200)]
    ratings = arena.online_elo(battles, names, k=32)
    assert math.isclose(sum(ratings.values()), 4000, abs_tol=1e-6)
    averaged = arena.elo_ratings(battles, names, k=32, permutations=10)
    assert math.isclose(sum(averaged.values()), 4000, abs_tol=1e-6)
    assert arena.online_elo(battles[::-1], names, k=32) != ratings  # online Elo depends on the order
    assert arena.elo_ratings(battles, names, seed=3) == arena.elo_ratings(battles, names, seed=3)


def test_better_player_in_noisy_battles_rates_higher():
    rng = random.Random(1)
    battles = []
    for _ in range(600):  # "strong" beats "weak" 75 % of the time, shown in random positions
        strong_wins = rng.random() < 0.75
        if rng.random() < 0.5:
            battles.append(Battle("strong", "weak", "a" if strong_wins else "b"))
        else:
            battles.append(Battle("weak", "strong", "b" if strong_wins else "a"))
    ratings = arena.elo_ratings(battles, ["strong", "weak"], permutations=20)
    gap = ratings["strong"] - ratings["weak"]
    assert 100 < gap < 300  # 75 % is a gap of 400 * log10(3) ≈ 191 points


def test_win_rate_matrix_is_complementary_and_ignores_ties():
    battles = [Battle("x", "y", "a"), Battle("x", "y", "a"), Battle("y", "x", "a"), Battle("x", "y", "tie"),
               Battle("x", "z", "b"), Battle("y", "z", "tie")]
    rate = arena.win_rate_matrix(battles, ["x", "y", "z"])
    assert rate["x"]["y"] == 2 / 3 and rate["y"]["x"] == 1 / 3
    assert rate["x"]["z"] == 0.0 and rate["z"]["x"] == 1.0
    assert rate["y"]["z"] is None and rate["z"]["y"] is None  # only a tie: no decided battle
    assert all(rate[m][m] is None for m in "xyz")
    for a in "xyz":
        for b in "xyz":
            if rate[a][b] is not None:
                assert math.isclose(rate[a][b] + rate[b][a], 1.0)
    wins, ties = arena.win_counts(battles, ["x", "y", "z"])
    assert wins["x"]["y"] == 2 and ties["x"]["y"] == ties["y"]["x"] == 1


def test_distinct_n_on_hand_examples():
    assert arena.distinct_n(["the king the king"], 1) == 0.5  # 2 distinct of 4 words
    assert arena.distinct_n(["the king the king"], 2) == 2 / 3  # (the king), (king the), (the king)
    assert arena.distinct_n(["Love is kind.", "Love is blind."], 1) == 4 / 6
    assert arena.distinct_n(["Love is kind.", "Love is blind."], 2) == 3 / 4
    assert arena.distinct_n(["One", ""], 2) == 0.0  # no bigram at all
    assert arena.distinct_n(["all words differ here"], 1) == 1.0
    with pytest.raises(ValueError):
        arena.distinct_n(["x"], 0)


def test_judged_battles_cover_every_pair_and_call_gold_ties_ties():
    from rlhf_helpers.labeler import SimulatedLabeler

    prompts = [ABOUT_LOVE, ABOUT_NIGHT]
    answers = {"good": ["sweet love is kind and fair.", "the night is gentle tonight."],
               "same": ["sweet love is kind and fair.", "the night is gentle tonight."],
               "bad": ["the the the the", "Death and blood."]}
    ended = {name: [True, True] for name in answers}
    battles = arena.judge_battles(prompts, answers, ended, SimulatedLabeler(tau=0.05))
    assert len(battles) == 2 * 3
    for b in battles:
        if {b.model_a, b.model_b} == {"good", "same"}:
            assert b.winner == "tie"
        elif "bad" in (b.model_a, b.model_b):  # a careful labeler (tau 0.05) picks the better answer
            assert (b.model_a if b.winner == "a" else b.model_b) != "bad"


def _arena_results(seed=0, n=120):
    """Arena results on ``n`` made-up prompts: ``sft`` and ``resampled`` draw their answers from the
    same pool (a control: no real difference), ``better`` answers well three times in four."""
    rng = random.Random(seed)
    prompts = [f"Continue this line: the king{i} is" for i in range(n)]
    pool = ["good and fair.", "the the the", "dead.", "kind and gentle, my lord.", "of a tading"]
    answers = {"sft": [rng.choice(pool) for _ in prompts], "resampled": [rng.choice(pool) for _ in prompts],
               "better": [pool[3] if rng.random() < 0.75 else rng.choice(pool) for _ in prompts]}
    return {"prompts": prompts, "answers": answers, "ended": {name: [True] * n for name in answers}}


def test_a_gain_is_significant_only_for_a_real_difference():
    results = _arena_results()
    control = arena.gain_over(results, "resampled")
    assert control.low < 0 < control.high  # the control: the same model, answered again
    with pytest.raises(AssertionError, match="resampled over sft: not shown.*could be noise"):
        stats.check_above_zero(control, "resampled over sft")
    gain = arena.gain_over(results, "better")
    stats.check_above_zero(gain, "better over sft")
    assert gain.low > 0 and gain.estimate > control.estimate
    assert arena.gain_over(results, "better", metric="gold") == gain  # deterministic


def test_per_prompt_values_follow_the_answers():
    prompts = [ABOUT_LOVE, ABOUT_NIGHT]
    results = {"prompts": prompts, "answers": {"good": ["sweet love is kind and fair.", "the night is gentle tonight."],
                                               "bad": ["the the the the", "Death and blood."]},
               "ended": {"good": [True, True], "bad": [True, True]}}
    assert arena.per_prompt(results, "good", "following") == [1.0, 1.0]  # each continues, naming its topic
    assert arena.per_prompt(results, "bad", "following") == [0.0, 0.0]  # neither names its topic
    good, bad = arena.per_prompt(results, "good"), arena.per_prompt(results, "bad")
    # good: follows (1) plus tone: sweet, kind, fair clip to +0.5 ("love" is the topic, not tone);
    # gentle alone is +0.25; both are 28 characters, short of a full line: -(40-28)/40 * 0.5 = -0.15.
    # So 1 + 0.5 - 0.15 = 1.35 and 1 + 0.25 - 0.15 = 1.1.
    # bad: no follows; "the the the the" repeats 2 of its 3 word pairs (-2/3) and has 15 characters:
    # -(40-15)/40 * 0.5 = -0.3125; "Death and blood." has two gloomy words (-0.5) and 16 characters:
    # -(40-16)/40 * 0.5 = -0.3, so -0.8.
    assert good == pytest.approx([1.35, 1.1]) and bad == pytest.approx([-2 / 3 - 0.3125, -0.8])
    with pytest.raises(ValueError, match="metric"):
        arena.per_prompt(results, "good", "elo")


def test_elo_intervals_hold_the_estimate_and_narrow_with_more_prompts():
    rng = random.Random(1)

    def battles(n):  # "strong" beats "weak" 70 % of the time, on n prompts, 5 battles each
        return [Battle("strong", "weak", "a" if rng.random() < 0.7 else "b", f"p{i}") for i in range(n) for _ in range(5)]

    few, many = (arena.elo_intervals(battles(n), ["strong", "weak"], resamples=200) for n in (80, 1280))
    for intervals in (few, many):
        assert intervals["strong"].low < intervals["strong"].estimate < intervals["strong"].high
        assert intervals["weak"].high < intervals["strong"].low  # they separate
    true_rating = 1000 + 200 * math.log10(0.7 / 0.3)  # half of the gap that odds of 7 to 3 mean
    assert many["strong"].low < true_rating < many["strong"].high
    width = lambda i: i.high - i.low
    assert width(many["strong"]) < width(few["strong"]) / 1.5  # not /4: online Elo's order noise stays


def test_the_vectorised_replay_is_online_elo():
    import numpy as np

    rng = random.Random(3)
    names = ["x", "y", "z"]
    battles = [Battle(*rng.sample(names, 2), rng.choice(arena.OUTCOMES)) for _ in range(60)]
    number = {n: i for i, n in enumerate(names)}
    a = np.array([[number[b.model_a] for b in battles]])
    b = np.array([[number[b.model_b] for b in battles]])
    score = np.array([[arena.actual_score(b.winner) for b in battles]])
    replayed = arena.replay_elo(a, b, score, 3, k=16)[0]
    expected = arena.online_elo(battles, names, k=16)
    assert all(math.isclose(replayed[number[n]], expected[n]) for n in names)


def test_elo_intervals_need_as_many_battles_on_every_prompt():
    uneven = [Battle("x", "y", "a", "p1"), Battle("x", "y", "b", "p1"), Battle("x", "y", "a", "p2")]
    with pytest.raises(ValueError, match="as many battles on every prompt"):
        arena.elo_intervals(uneven, ["x", "y"])


def test_elo_intervals_of_a_coin_flip_overlap():
    rng = random.Random(2)
    coin = [Battle("x", "y", rng.choice("ab"), f"p{i}") for i in range(200)]
    intervals = arena.elo_intervals(coin, ["x", "y"])
    assert intervals["x"].low < intervals["y"].high and intervals["y"].low < intervals["x"].high
