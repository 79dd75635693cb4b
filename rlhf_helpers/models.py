"""Any causal language model as the starting point of post-training (``--model`` / ``$RLHF_MODEL``).

By default the stages after lesson 02 start from the course's own GPT (the ``base`` artifact, a
GPT-2 in transformers' terms). ``python -m course run sft --model PATH_OR_ID`` starts them from
another model instead: a folder saved with ``save_pretrained`` (``config.json``, safetensors
weights and a tokenizer) or, with ``RLHF_ALLOW_HUB=1``, a model on the Hugging Face hub (``org/name``,
or ``org/name@revision`` to pin one). Any decoder that transformers' ``AutoModelForCausalLM``
knows works: GPT-2, Llama, Qwen2 and the rest. Nothing else in the course names an architecture:

- **Loading** (``load_causal_lm``): the ``Auto`` classes, weights from safetensors only, and never
  code from the model's folder (``trust_remote_code`` stays off).
- **Context** (``context_length``): read from the config (``n_positions`` or
  ``max_position_embeddings``), capped at ``MAX_CONTEXT``: the course's prompts and answers are short.
- **Chat** (``prepare_for_chat``): the tokenizer's own chat template if it has one, else the
  course's ChatML with its two special tokens (new embedding rows); a pad token (the end-of-text
  token when the tokenizer has none) that the model's config knows too.
- **Identity** (``model_identity``): which model it is, in every later artifact's config, so that
  two models never share an artifact. Without ``--model`` no config changes at all, so the default
  artifacts keep their keys.

Left out: models that need remote code, quantised loading, and encoder-decoder models.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

MODEL_VAR = "RLHF_MODEL"
MAX_CONTEXT = 1024  # tokens: far more than any prompt + answer of the course needs
RESIZE_SEED = 0  # new embedding rows (the ChatML tokens) are drawn from their own seeded stream
_SMALL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "chat_template.jinja", "chat_template.json")


# --------------------------------------------------------------------------------------------
# Which model
# --------------------------------------------------------------------------------------------

def chosen_model() -> str | None:
    """``$RLHF_MODEL`` (a folder or a hub id), or None: start from the course's base GPT."""
    return os.environ.get(MODEL_VAR, "").strip() or None


def resolve(source: str) -> str:
    """A folder as an absolute path, or a hub id as given; ``CourseConfigError`` when it cannot be used.

    A name that is not a folder here is a hub id, and the course is offline unless
    ``RLHF_ALLOW_HUB=1``: it is refused before anything is built, with what to do instead.
    """
    from rlhf_helpers.env import ALLOW_HUB_VAR, CourseConfigError, hub_allowed

    folder = Path(source).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise CourseConfigError(f"--model {source}: that folder has no config.json; give a folder written by "
                                    "save_pretrained (config.json, safetensors weights and the tokenizer's files).")
        return str(folder.resolve())
    if not hub_allowed():
        raise CourseConfigError(
            f"--model {source}: no such folder here, so it would be a model on the Hugging Face hub, and the course "
            f"is offline. Set {ALLOW_HUB_VAR}=1 to let it download {source!r}, or give the path of a folder saved "
            "with save_pretrained.")
    return source


def _hub_id_and_revision(source: str) -> tuple[str, str]:
    """``"org/name@rev"`` -> ``("org/name", "rev")``; no ``@``: the ``main`` branch."""
    name, _, revision = source.partition("@")
    return name, revision or "main"


@functools.lru_cache(maxsize=8)
def _folder_digest(folder: str, stamp: tuple) -> str:
    """SHA-256 over a model folder's small files and its weights (once per process and version)."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).iterdir()):
        if path.name in _SMALL_FILES or path.suffix == ".safetensors":
            digest.update(path.name.encode())
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def model_identity(source: str) -> dict:
    """What names a model in an artifact's config: a folder's absolute path and a hash of its
    configuration, tokenizer and weights (a model trained again in the same folder is a new model),
    or a hub id and its revision."""
    resolved = resolve(source)
    folder = Path(resolved)
    if not folder.is_dir():
        hub_id, revision = _hub_id_and_revision(resolved)
        return {"hub_id": hub_id, "revision": revision}
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file())
    return {"folder": resolved, "sha256": _folder_digest(resolved, stamp)}


def start_config(profile=None) -> dict:
    """The SFT stage's starting point, for its artifact config (and so every later one's):
    ``{"base": <the base GPT's config>}`` by default, exactly as before ``--model`` existed, or
    ``{"model": model_identity(...)}`` for a chosen model."""
    source = chosen_model()
    if source is None:
        from rlhf_helpers import gpt

        return {"base": gpt.base_config(profile)}
    return {"model": model_identity(source)}


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def load_causal_lm(source, *, prepare: bool = False):
    """Any causal LM and its tokenizer, as ``(model, tokenizer)``, in eval mode, on the course device.

    ``source`` is a folder (a stage's ``model/``) or a resolved hub id (``org/name[@revision]``).
    Weights come from safetensors, never from a pickle, and no code from the model's folder runs.
    ``prepare=True`` also makes it ready for the course's chat (``prepare_for_chat``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_helpers.env import get_device

    name, revision = str(source), None
    if not Path(name).is_dir():
        name, revision = _hub_id_and_revision(name)
    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(name, revision=revision, use_safetensors=True,
                                                 trust_remote_code=False)
    if prepare:
        prepare_for_chat(model, tokenizer)
    return model.to(get_device()).eval(), tokenizer


def load_start_model():
    """The model SFT starts from: the ``base`` GPT by default, else the ``--model`` one, made ready
    for chat; ``(model, tokenizer)`` in eval mode on the course device."""
    source = chosen_model()
    if source is None:
        from rlhf_helpers import gpt

        return gpt.load_base_model()
    return load_causal_lm(resolve(source), prepare=True)


# --------------------------------------------------------------------------------------------
# What the course needs from a model and its tokenizer
# --------------------------------------------------------------------------------------------

def context_length(model_or_config, tokenizer=None) -> int:
    """How many tokens the model reads at once, capped at ``MAX_CONTEXT``.

    GPT-2 calls it ``n_positions``, Llama and Qwen2 ``max_position_embeddings``; a config with
    neither falls back on the tokenizer's ``model_max_length``. A peft model answers with its
    base model's config.
    """
    config = getattr(model_or_config, "config", model_or_config)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    length = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if not length and tokenizer is not None and tokenizer.model_max_length < 1e9:
        length = tokenizer.model_max_length
    if not length:
        raise ValueError(f"Cannot tell the context length of a {type(config).__name__}: it has neither "
                         "n_positions nor max_position_embeddings.")
    return min(int(length), MAX_CONTEXT)


def prepare_for_chat(model, tokenizer) -> int:
    """Give a model and its tokenizer what the course's stages need; in place. Returns the number
    of tokens added to the vocabulary (0 for the course's own models).

    - a pad token: the tokenizer's own, else its end-of-text token (padding is always masked out);
    - a chat template: the tokenizer's own, else the course's ChatML (``tokenizers.add_chat_template``),
      whose two new tokens get new embedding rows, drawn from a seeded stream so that loading the
      same model twice gives the same rows (SFT then trains them);
    - ``config.pad_token_id`` (and the generation config's): a reward model reads its score at the
      last token that is not padding, so it must know which token pads.
    """
    import torch

    from rlhf_helpers import tokenizers

    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("The tokenizer has neither a pad token nor an end-of-text token to pad with.")
        tokenizer.pad_token = tokenizer.eos_token
    added = 0 if tokenizer.chat_template else tokenizers.add_chat_template(tokenizer)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RESIZE_SEED)
            model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return added
