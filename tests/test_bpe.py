"""The from-scratch BPE of lesson 01 (rlhf_helpers.bpe) and the checks of its exercises."""

from __future__ import annotations

import pytest

from rlhf_helpers import bpe
from rlhf_helpers.checks import l01_tokenization as l01
from rlhf_helpers.exercises import ExerciseError
from rlhf_helpers.tokenizers import get_encoding

SAMPLES = [
    "hello world",
    "Hello World!!! 123456789  \n\n\tfoo   bar\r\n",
    "I'm sure you'RE right, he'll say; they've DON'T",
    "naïve café: 3.14159 ≈ π, 你好，世界 🙂👨‍👩‍👧 🇫🇷",
    "def f(x):\n    return x ** 2  # square\n\n\nprint(f(12345))\n",
    "aaaaaaaaaaaaaaaaaaaaaaa bbbbbbbb",
    "   leading spaces and trailing   ",
    "",
]


@pytest.fixture(scope="module")
def shakespeare() -> str:
    from rlhf_helpers.data import load_corpus, train_val_split

    train, val = train_val_split(load_corpus())
    return train[:20_000] + val[:20_000]


def test_get_stats_counts_pairs_in_first_seen_order():
    stats = bpe.get_stats([1, 2, 3, 1, 2])
    assert stats == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert list(stats) == [(1, 2), (2, 3), (3, 1)]
    assert bpe.get_stats([]) == {} and bpe.get_stats([4]) == {}
    assert bpe.get_stats([5, 5, 5]) == {(5, 5): 2}


def test_get_stats_adds_to_existing_counts():
    counts = {(1, 2): 5}
    assert bpe.get_stats([1, 2, 3], counts) is counts
    assert counts == {(1, 2): 6, (2, 3): 1}


def test_merge_replaces_every_occurrence_left_to_right():
    assert bpe.merge([1, 2, 3, 1, 2], (1, 2), 256) == [256, 3, 256]
    assert bpe.merge([1, 1, 1], (1, 1), 256) == [256, 1]
    assert bpe.merge([1, 1, 1, 1], (1, 1), 256) == [256, 256]
    assert bpe.merge([3, 1, 2], (1, 2), 256) == [3, 256]
    assert bpe.merge([], (1, 2), 256) == []
    ids = [1, 2]
    bpe.merge(ids, (1, 2), 256)
    assert ids == [1, 2], "merge must not modify its input"


def test_train_reproduces_the_wikipedia_example():
    # aaabdaaabac: aa -> Z (256); then Za and ab tie at 2, Za is seen first -> Y (257); Yb -> X (258)
    assert bpe.train("aaabdaaabac", 259) == {(97, 97): 256, (256, 97): 257, (257, 98): 258}
    assert bpe.train("abc", 256) == {}
    assert bpe.train("ab", 300) == {(97, 98): 256}  # stops when no pair is left
    with pytest.raises(ValueError):
        bpe.train("abc", 100)


def test_vocab_and_decode():
    merges = bpe.train("aaabdaaabac", 259)
    vocab = bpe.build_vocab(merges)
    assert vocab[256] == b"aa" and vocab[257] == b"aaa" and vocab[258] == b"aaab"
    assert bpe.decode([258, 100, 258, 97, 99], merges) == "aaabdaaabac"
    # a token sequence cut inside a multi-byte character decodes with a replacement mark
    assert bpe.decode(list("é".encode())[:1], {}) == "\ufffd"


def test_encode_compresses_and_round_trips(shakespeare):
    merges = bpe.train(shakespeare[:5_000], 300)
    assert len(merges) == 44
    for text in SAMPLES + [shakespeare[20_000:22_000]]:
        ids = bpe.encode(text, merges)
        assert bpe.decode(ids, merges) == text
    held_out = shakespeare[20_000:22_000]
    assert len(bpe.encode(held_out, merges)) < 0.8 * len(held_out.encode())


def test_encode_equals_applying_merges_in_training_order(shakespeare):
    merges = bpe.train(shakespeare[:3_000], 320)
    text = shakespeare[25_000:26_000]
    ids = list(text.encode())
    for pair, idx in merges.items():
        ids = bpe.merge(ids, pair, idx)
    assert bpe.encode(text, merges) == ids


def test_gpt4_pattern_is_tiktokens_and_split_is_lossless():
    assert bpe.GPT4_SPLIT_PATTERN == get_encoding("cl100k_base")._pat_str
    for text in SAMPLES:
        assert "".join(bpe.split_text(text)) == text
    assert bpe.split_text("hello world, 1234567!") == ["hello", " world", ",", " ", "123", "456", "7", "!"]
    assert bpe.split_text("I'm", bpe.GPT2_SPLIT_PATTERN) == ["I", "'m"]


def _naive_train_regex(text: str, vocab_size: int) -> dict:
    """minbpe's RegexTokenizer.train: every chunk occurrence counted separately."""
    chunks = [list(c.encode()) for c in bpe.split_text(text)]
    merges = {}
    for idx in range(256, vocab_size):
        stats = {}
        for ids in chunks:
            bpe.get_stats(ids, stats)
        if not stats:
            break
        pair = max(stats, key=stats.get)
        chunks = [bpe.merge(ids, pair, idx) for ids in chunks]
        merges[pair] = idx
    return merges


def test_train_regex_equals_the_naive_version_ties_included(shakespeare):
    text = shakespeare[:6_000]
    fast, naive = bpe.train_regex(text, 400), _naive_train_regex(text, 400)
    assert len(fast) == 144
    assert list(fast.items()) == list(naive.items())


def test_train_regex_never_merges_across_chunks():
    text = "dog dog. dog! dog? dog, dog; " * 20
    merges = bpe.train_regex(text, 300)
    vocab = bpe.build_vocab(merges)
    learned = [vocab[idx] for idx in merges.values()]
    assert b" dog" in learned
    assert not any(b"g." in t or b"g!" in t or b"g " in t for t in learned)
    # without the pre-split, plain BPE happily learns tokens across the boundaries
    assert any(b"g" in t and (b"." in t or b"," in t) for t in bpe.build_vocab(bpe.train(text, 300)).values())


def test_encode_regex_round_trips(shakespeare):
    merges = bpe.train_regex(shakespeare[:10_000], 400)
    for text in SAMPLES + [shakespeare[20_000:25_000]]:
        assert bpe.decode(bpe.encode_regex(text, merges), merges) == text


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_encode_with_ranks_equals_tiktoken(name, shakespeare):
    enc = get_encoding(name)
    for text in SAMPLES + [shakespeare[20_000:30_000]]:
        assert bpe.encode_with_ranks(text, enc._mergeable_ranks, enc._pat_str) == enc.encode_ordinary(text), text[:40]


def test_bpe_with_ranks_on_a_toy_ranking():
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256, b"bc": 257, b"abc": 258}
    assert bpe.bpe_with_ranks(b"abc", ranks) == [258]  # ab (256) first, then ab+c
    assert bpe.bpe_with_ranks(b"xbc", ranks) == [ord("x"), 257]
    assert bpe.bpe_with_ranks(b"", ranks) == []


# --- the exercise checks ----------------------------------------------------------------------

REFERENCES = [
    (l01.check_get_stats, bpe.get_stats),
    (l01.check_merge, bpe.merge),
    (l01.check_train_bpe, bpe.train),
    (l01.check_encode, bpe.encode),
    (l01.check_train_regex, bpe.train_regex),
    (l01.check_bpe_with_ranks, bpe.bpe_with_ranks),
]


def _stub(*args, **kwargs):
    raise NotImplementedError("Your turn")


@pytest.mark.parametrize("checker, reference", REFERENCES)
def test_checks_accept_the_reference_and_fall_back_when_not_attempted(checker, reference, capsys):
    assert checker(reference) is reference
    assert "✓" in capsys.readouterr().out
    assert checker(_stub) is reference
    assert "not attempted" in capsys.readouterr().out


def test_wrong_answers_get_a_clear_message():
    def unordered_stats(ids, counts=None):
        return dict(sorted(bpe.get_stats(ids, counts).items()))

    with pytest.raises(ExerciseError, match=r"(?s)01\.1.*order they first appear"):
        l01.check_get_stats(unordered_stats)

    def drops_last(ids, pair, idx):
        return bpe.merge(ids, pair, idx)[:-1] if ids else []

    with pytest.raises(ExerciseError, match=r"(?s)01\.2.*expected"):
        l01.check_merge(drops_last)

    def smallest_pair_on_ties(text, vocab_size):
        ids, merges = list(text.encode()), {}
        for idx in range(256, vocab_size):
            stats = bpe.get_stats(ids)
            if not stats:
                break
            pair = min(stats, key=lambda p: (-stats[p], p))
            ids, merges[pair] = bpe.merge(ids, pair, idx), idx
        return merges

    with pytest.raises(ExerciseError, match=r"(?s)01\.3.*merge number 1"):
        l01.check_train_bpe(smallest_pair_on_ties)

    with pytest.raises(ExerciseError, match=r"(?s)01\.4.*raised KeyError"):
        l01.check_encode(lambda text, merges: [merges[(0, 0)]])

    with pytest.raises(ExerciseError, match=r"(?s)01\.5"):
        l01.check_train_regex(lambda text, vocab_size, pattern=bpe.GPT4_SPLIT_PATTERN: bpe.train(text, vocab_size))

    with pytest.raises(ExerciseError, match=r"(?s)01\.6.*b'hello'"):
        l01.check_bpe_with_ranks(lambda chunk, ranks: [ranks[bytes([b])] for b in chunk])
