"""The real tiktoken encodings must load with the network unavailable."""

import pytest

from rlhf_helpers.env import network_blocked
from rlhf_helpers.tokenizers import get_encoding, seed_tiktoken_cache

# Ids published by OpenAI's examples and tiktoken's own tests.
KNOWN = {
    "cl100k_base": {"hello world": [15339, 1917], "tiktoken is great!": [83, 1609, 5963, 374, 2294, 0]},
    "o200k_base": {"hello world": [24912, 2375]},
}
VOCAB = {"cl100k_base": 100277, "o200k_base": 200019}
END_OF_TEXT = {"cl100k_base": 100257, "o200k_base": 199999}


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_real_encodings_offline(name):
    with network_blocked():
        enc = get_encoding(name)
        for text, ids in KNOWN[name].items():
            assert enc.encode(text) == ids
        assert enc.n_vocab == VOCAB[name]
        assert enc.encode("<|endoftext|>", allowed_special="all") == [END_OF_TEXT[name]]
        sample = "Shall I compare thee to a summer's day? 你好 🙂\n\tdef f(x): return 42"
        assert enc.decode(enc.encode(sample)) == sample


def test_damaged_cache_file_is_replaced(isolated_artifacts):
    path = seed_tiktoken_cache("cl100k_base")
    path.write_bytes(b"garbage")
    assert seed_tiktoken_cache("cl100k_base") == path
    with network_blocked():
        assert get_encoding("cl100k_base").encode("hello world") == [15339, 1917]


def test_unknown_encoding_is_a_clear_error():
    with pytest.raises(ValueError, match="cl100k_base, o200k_base"):
        seed_tiktoken_cache("p50k_base")
