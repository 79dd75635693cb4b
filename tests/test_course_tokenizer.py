"""The course tokenizer of lesson 01: a byte-level BPE saved as the ``tokenizer`` artifact."""

from __future__ import annotations

import json

import pytest

from rlhf_helpers import tokenizers as course_tokenizers
from rlhf_helpers.data import load_corpus, train_val_split

MESSAGES = [
    {"role": "system", "content": "You are a helpful poet."},
    {"role": "user", "content": "Continue this line about love: Tell me in sadness,"},
    {"role": "assistant", "content": "who is that you love?"},
]


@pytest.fixture(scope="module")
def tok():
    return course_tokenizers.course_tokenizer()


@pytest.fixture(scope="module")
def corpus() -> str:
    return load_corpus()


def test_vocabulary_and_special_tokens(tok):
    assert len(tok) == course_tokenizers.COURSE_VOCAB_SIZE == 2048
    assert tok.convert_tokens_to_ids(list(course_tokenizers.SPECIAL_TOKENS)) == [0, 1, 2, 3]
    assert tok.eos_token == tok.bos_token == "<|endoftext|>" and tok.eos_token_id == 0
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id == 1
    assert set(tok.all_special_tokens) == set(course_tokenizers.SPECIAL_TOKENS)


def test_special_tokens_are_single_ids_and_survive_decoding(tok):
    text = "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>"
    ids = tok.encode(text)
    assert ids[0] == 2 and 3 in ids and ids[-1] == 0
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi\n"
    assert tok.encode("hello") == tok("hello").input_ids  # nothing added automatically


def test_round_trip_on_the_whole_corpus(tok, corpus):
    speeches = corpus.split("\n\n")
    ids = tok(speeches).input_ids
    assert tok.batch_decode(ids) == speeches
    tokens = sum(len(i) for i in ids)
    assert 2.3 < len(corpus) / tokens < 4.0, "a 2k BPE on its own corpus compresses ~2.7 characters per token"
    assert not any(i in (0, 1, 2, 3) for seq in ids[:2000] for i in seq), "plain text never yields a special token"


@pytest.mark.parametrize("text", [
    "ROMEO:\nBut soft!\n\n\n  What light?\t\r\n",
    "naïve café 你好，世界 🙂👨‍👩‍👧 🇫🇷",
    "def f(x):\n    return x ** 2\n",
    " leading and trailing spaces  ",
    "",
])
def test_any_text_round_trips(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_chat_template_renders_chatml(tok):
    prompt = tok.apply_chat_template(MESSAGES[1:2], tokenize=False, add_generation_prompt=True)
    assert prompt == ("<|im_start|>user\nContinue this line about love: Tell me in sadness,<|im_end|>\n"
                      "<|im_start|>assistant\n")
    full = tok.apply_chat_template(MESSAGES, tokenize=False)
    assert full == (
        "<|im_start|>system\nYou are a helpful poet.<|im_end|>\n"
        "<|im_start|>user\nContinue this line about love: Tell me in sadness,<|im_end|>\n"
        "<|im_start|>assistant\nwho is that you love?<|im_end|>\n"
    )


def test_chat_template_marks_the_assistants_tokens(tok):
    out = tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    answer = tok.decode([i for i, m in zip(ids, mask) if m])
    assert answer == "who is that you love?<|im_end|>"


def test_beats_cl100k_at_equal_vocabulary_size_on_held_out_shakespeare(tok, corpus):
    from rlhf_helpers import bpe

    train, val = train_val_split(corpus)
    held_out = val[:50_000]
    ours = len(tok.encode(held_out))
    enc = course_tokenizers.get_encoding("cl100k_base")
    first_2048 = {token: rank for token, rank in enc._mergeable_ranks.items() if rank < 2048}
    theirs = len(bpe.encode_with_ranks(held_out, first_2048, enc._pat_str))
    assert ours < 0.97 * theirs, "trained on Shakespeare, 2k tokens should beat cl100k's first 2k on Shakespeare"
    seen = len(tok.encode(train[:50_000]))
    assert abs(ours / seen - 1) < 0.1, "held-out text should compress about as well as training text"


def test_artifact_is_save_pretrained_files_and_loads_with_auto_tokenizer():
    from transformers import AutoTokenizer

    folder = course_tokenizers.course_tokenizer_path()
    names = {p.name for p in folder.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "artifact.json"} <= names
    assert not any(n.endswith((".pkl", ".pickle", ".bin", ".pt")) for n in names)
    manifest = json.loads((folder / "artifact.json").read_text())
    assert manifest["config"]["split"] == "train" and manifest["config"]["vocab_size"] == 2048
    auto = AutoTokenizer.from_pretrained(str(folder))
    assert auto.encode("To be, or not to be") == course_tokenizers.course_tokenizer().encode("To be, or not to be")
    assert auto.apply_chat_template(MESSAGES[1:2], tokenize=False, add_generation_prompt=True).endswith("assistant\n")


def test_training_is_deterministic_and_byte_complete():
    text = "To be, or not to be, that is the question.\n" * 50
    a = course_tokenizers.train_byte_level_bpe(text, 300)
    b = course_tokenizers.train_byte_level_bpe(text, 300)
    assert a.to_str() == b.to_str()
    vocab = a.get_vocab()
    assert [vocab[t] for t in course_tokenizers.SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert len(vocab) <= 300
    from tokenizers.pre_tokenizers import ByteLevel

    assert all(symbol in vocab for symbol in ByteLevel.alphabet()), "all 256 bytes, even unseen ones"
    unseen = "Zebra 🦓 zoo"
    assert a.decode(a.encode(unseen).ids) == unseen
