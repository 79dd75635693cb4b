"""The real-word rate: strict pieces, one-letter fragments, and intervals that separate real text
from invented text."""

import random

import pytest

from rlhf_helpers import words

VOCAB = words.vocabulary_of("Love's labour, well-a-day! O my lord, I am a king. The night is dark.")


def test_pieces_split_on_apostrophes_and_hyphens():
    assert words.pieces("Love's labour, well-a-day!") == ["love", "s", "labour", "well", "a", "day"]
    assert words.pieces("O'er 3 hills\n") == ["o", "er", "hills"]


def test_one_letter_fragments_are_not_words():
    assert {"a", "i", "o"} <= VOCAB and "s" not in VOCAB  # "love's" gave a fragment, not a word
    assert words.real_flags("love's kill'd", VOCAB) == [1.0, 0.0]  # "s" and "d" are not counted; "kill" is unseen
    assert words.counted("x y z o") == ["o"]  # single letters earn nothing
    assert words.real_flags("O, a king", VOCAB) == [1.0, 1.0, 1.0]


def test_invented_compounds_fail_on_their_invented_half():
    assert words.real_flags("night-wros", VOCAB) == [1.0, 0.0]
    assert words.invented_words(["the wros and the wros", "simable night"], VOCAB) == ["wros", "and", "simable"]


def test_the_rate_pools_pieces_and_separates_real_from_invented_text():
    rng = random.Random(0)
    real = sorted(VOCAB - {"s"})
    made_up = ["wros", "simable", "crual", "cret", "glis"]
    shakespeare = [" ".join(rng.choice(real) for _ in range(8)) for _ in range(60)]
    gibberish = [" ".join(rng.choice(real + made_up * 3) for _ in range(8)) for _ in range(60)]
    good, bad = words.real_word_rate(shakespeare, VOCAB), words.real_word_rate(gibberish, VOCAB)
    assert good.estimate == 1.0
    assert bad.high < good.low  # the control, texts with invented words, is told apart
    assert words.real_word_rate(["love", "wros wros wros"], VOCAB).estimate == 0.25  # pooled over pieces
    with pytest.raises(ValueError, match="no words at all"):
        words.real_word_rate(["123", "! s"], VOCAB)


def test_the_training_vocabulary_is_the_training_split_only():
    vocabulary = words.training_vocabulary()
    assert {"hamlet", "love", "the", "o", "a", "i"} <= vocabulary and "s" not in vocabulary
    assert 20_000 < len(vocabulary) < 40_000
