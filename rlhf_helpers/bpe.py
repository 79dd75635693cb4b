"""Byte-pair encoding from scratch: the reference code of lesson 01.

Written in the spirit of Andrej Karpathy's minbpe (github.com/karpathy/minbpe), which this module
follows closely: short functions, plain lists and dicts, no cleverness.

The idea (Sennrich et al., 2016, after Gage's 1994 compression scheme):

1. Write the text as UTF-8 bytes, so the starting vocabulary is the 256 byte values and *any*
   string can be encoded: there is no unknown token.
2. Count every adjacent pair of tokens; give the most frequent pair a new id and replace it
   everywhere. Repeat until the vocabulary has the size you want. The list of merges, in order,
   *is* the tokenizer.
3. To encode new text, start from bytes again and apply the learned merges in the order they
   were learned. To decode, expand each id back into its bytes and decode UTF-8.

Real tokenizers (GPT-2, GPT-4) first *pre-split* text with a regular expression into chunks
(words, numbers, punctuation, runs of spaces) and never merge across chunk boundaries, so that
"dog", "dog." and "dog!" share the token "dog" instead of learning three.

What is left out, on purpose: speed (training recounts every pair after every merge, which is
quadratic; real trainers update counts incrementally), special tokens, and saving to disk.
"""

from __future__ import annotations

from collections import Counter

import regex

# GPT-2's pre-split pattern: contractions, letters, numbers, punctuation, whitespace.
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-4's (cl100k_base) pattern, exactly as tiktoken has it: case-insensitive contractions,
# numbers in groups of at most three digits, and newlines kept apart from other whitespace.
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

Pair = tuple[int, int]


def get_stats(ids: list[int], counts: dict[Pair, int] | None = None) -> dict[Pair, int]:
    """Count how often each adjacent pair occurs in ``ids``.

    ``[1, 2, 3, 1, 2]`` gives ``{(1, 2): 2, (2, 3): 1, (3, 1): 1}``. Pairs appear in the dict in
    the order they are first seen, which decides ties during training. Pass ``counts`` to add to
    an existing dict (used when counting over many chunks).
    """
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):  # consecutive elements
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: list[int], pair: Pair, idx: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by the single token ``idx``.

    Scans left to right, so overlapping occurrences merge greedily: merging (1, 1) in
    ``[1, 1, 1]`` gives ``[idx, 1]``.
    """
    out = []
    i = 0
    while i < len(ids):
        if i < len(ids) - 1 and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train(text: str, vocab_size: int) -> dict[Pair, int]:
    """Learn ``vocab_size - 256`` merges on the raw UTF-8 bytes of ``text`` (no pre-split).

    Returns ``{pair: new_id}``, new ids 256, 257, ... in the order learned. The most frequent
    pair wins; a tie goes to the pair seen first. Stops early if no pair is left.
    """
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be at least 256 (the bytes), got {vocab_size}")
    ids = list(text.encode("utf-8"))
    merges: dict[Pair, int] = {}
    for idx in range(256, vocab_size):
        stats = get_stats(ids)
        if not stats:
            break
        pair = max(stats, key=stats.get)  # first maximum: ties go to the pair seen first
        ids = merge(ids, pair, idx)
        merges[pair] = idx
    return merges


def build_vocab(merges: dict[Pair, int]) -> dict[int, bytes]:
    """Every id's bytes: the 256 single bytes, then each merge's two parts glued together."""
    vocab = {idx: bytes([idx]) for idx in range(256)}
    for (a, b), idx in merges.items():  # dicts keep insertion order: parents come first
        vocab[idx] = vocab[a] + vocab[b]
    return vocab


def decode(ids: list[int], merges: dict[Pair, int]) -> str:
    """Ids back to text. Invalid UTF-8 (a token sequence cut mid-character) shows as '�'."""
    vocab = build_vocab(merges)
    return b"".join(vocab[idx] for idx in ids).decode("utf-8", errors="replace")


def encode_bytes(data: bytes, merges: dict[Pair, int]) -> list[int]:
    """Apply the learned merges to raw bytes, earliest-learned first (as in training)."""
    ids = list(data)
    while len(ids) >= 2:
        stats = get_stats(ids)
        # the pair that was merged earliest in training; pairs never merged rank as infinity
        pair = min(stats, key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            break  # nothing left to merge
        ids = merge(ids, pair, merges[pair])
    return ids


def encode(text: str, merges: dict[Pair, int]) -> list[int]:
    """Text to ids with learned merges, no pre-split."""
    return encode_bytes(text.encode("utf-8"), merges)


def split_text(text: str, pattern: str = GPT4_SPLIT_PATTERN) -> list[str]:
    """Pre-split ``text`` into the chunks BPE works inside; joining them gives ``text`` back."""
    return regex.findall(pattern, text)


def train_regex(text: str, vocab_size: int, pattern: str = GPT4_SPLIT_PATTERN) -> dict[Pair, int]:
    """Like ``train``, but merges never cross the chunks of ``split_text(text, pattern)``.

    Pairs are counted over all chunks together. Speed trick that real trainers use: most chunks
    are repeated words, so each *distinct* chunk is stored once with its frequency and its pairs
    count ``frequency`` times. Ties go to the pair seen first, exactly as in ``train``.
    """
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be at least 256 (the bytes), got {vocab_size}")
    chunk_counts = Counter(split_text(text, pattern))  # keeps first-seen order
    chunks = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())
    merges: dict[Pair, int] = {}
    for idx in range(256, vocab_size):
        stats: dict[Pair, int] = {}
        for ids, freq in zip(chunks, freqs):
            for pair in zip(ids, ids[1:]):
                stats[pair] = stats.get(pair, 0) + freq
        if not stats:
            break
        pair = max(stats, key=stats.get)
        # merge only where the pair can occur (a fast membership test skips most chunks)
        chunks = [merge(ids, pair, idx) if pair[0] in ids else ids for ids in chunks]
        merges[pair] = idx
    return merges


def encode_regex(text: str, merges: dict[Pair, int], pattern: str = GPT4_SPLIT_PATTERN) -> list[int]:
    """Pre-split, encode each chunk on its own, concatenate."""
    ids: list[int] = []
    for chunk in split_text(text, pattern):
        ids.extend(encode_bytes(chunk.encode("utf-8"), merges))
    return ids


def bpe_with_ranks(chunk: bytes, ranks: dict[bytes, int]) -> list[int]:
    """Encode one pre-split chunk the way tiktoken does, from its *ranks*.

    tiktoken stores a tokenizer not as merges but as ``{token_bytes: rank}``, where a token's
    rank is its id and also the order in which it was learned. Start from single bytes; at each
    step look at every adjacent pair, glue the two byte strings, and merge the pair whose result
    has the lowest rank (the earliest-learned merge); stop when no glued pair is a token. This
    mirrors ``tiktoken/_educational.py``.
    """
    parts = [bytes([b]) for b in chunk]
    while len(parts) >= 2:
        best = None  # (rank, position) of the best merge so far
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, i)
        if best is None:
            break
        i = best[1]
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2 :]
    return [ranks[part] for part in parts]


def encode_with_ranks(text: str, ranks: dict[bytes, int], pattern: str) -> list[int]:
    """A whole text with tiktoken's ranks and split pattern: equals ``enc.encode_ordinary``."""
    ids: list[int] = []
    for chunk in split_text(text, pattern):
        ids.extend(bpe_with_ranks(chunk.encode("utf-8"), ranks))
    return ids
