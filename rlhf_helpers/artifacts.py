"""The artifact cache: each stage's output, built once and reused by every later lesson.

The course is a pipeline (tokenizer -> base -> sft -> reward model -> ppo ...), yet every lesson
must also run on its own on a fresh machine. ``fetch(stage, config, build)`` gives both: it
returns the folder of an artifact made with exactly this ``config``, and when there is none it
runs ``build`` (the reference code of the lesson that teaches that stage), with a progress bar
and a one-line note saying so.

How it stays safe:

- **Keyed by configuration.** The folder name is a hash of the config, so changing a size or a
  seed builds a new artifact instead of silently loading a stale one.
- **Atomic.** ``build`` writes into a hidden temporary folder; a manifest (``artifact.json``)
  listing every file, its size and SHA-256 is written last, and only then is the folder renamed
  into place. An interrupted build leaves no folder that a later run would load.
- **Never destructive.** A damaged artifact is moved aside (not deleted) and rebuilt.
- **Visible.** Artifacts live in ``artifacts/`` at the course root (git-ignored), or wherever
  ``$RLHF_ARTIFACTS`` points.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from tqdm.auto import tqdm

ARTIFACTS_VAR = "RLHF_ARTIFACTS"
MANIFEST = "artifact.json"
Builder = Callable[[Path, tqdm], None]


class ProgressBar(tqdm):
    """A ``tqdm.auto`` bar that refreshes at most ``REFRESHES`` times a pass and once a second.

    In a notebook each refresh is a message on Jupyter's output channel. A bar throttled by time
    alone sends more of them the slower the machine, and a long build on a slow laptop sent
    thousands; counting steps too bounds them whatever the machine.
    """

    REFRESHES = 50

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("mininterval", 1.0)
        super().__init__(*args, **kwargs)
        self._bound_refreshes()

    def reset(self, total=None):
        super().reset(total=total)
        self._bound_refreshes()

    def _bound_refreshes(self) -> None:
        if self.total:
            self.miniters = max(1, math.ceil(self.total / self.REFRESHES))
            self.dynamic_miniters = False


class ArtifactError(RuntimeError):
    """An artifact that cannot be used; the message says what happened and what to do."""


def course_root() -> Path | None:
    """The course checkout this package was installed from (editable install), if any."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").exists() and (root / "lessons").is_dir() else None


def display_path(path: Path | str) -> str:
    """``path`` as a learner reads it: relative to the course folder when inside it
    (``artifacts/tokenizer/4b6b...``), else as it is (a folder set with ``$RLHF_ARTIFACTS``)."""
    path, root = Path(path), course_root()
    return path.relative_to(root).as_posix() if root is not None and path.is_relative_to(root) else str(path)


def artifacts_dir() -> Path:
    """``$RLHF_ARTIFACTS``, else ``artifacts/`` in the course folder, else a per-user cache."""
    if os.environ.get(ARTIFACTS_VAR):
        return Path(os.environ[ARTIFACTS_VAR]).expanduser()
    root = course_root()
    return root / "artifacts" if root else Path.home() / ".cache" / "rlhf-course" / "artifacts"


def config_key(config: Mapping[str, Any]) -> str:
    """A short, stable hash of a JSON-able config: equal configs, equal keys."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_table(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file under ``folder`` (but the manifest) with its size and SHA-256."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}


def verify(folder: Path, *, full: bool = False) -> dict[str, Any]:
    """Check an artifact against its manifest; return the manifest or raise ``ArtifactError``.

    Sizes are always checked (cheap); ``full=True`` also re-hashes every file.
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as err:
        raise ArtifactError(f"{folder} has no readable {MANIFEST} ({err})") from None
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{folder} is missing {name}")
        if path.stat().st_size != expected["bytes"]:
            raise ArtifactError(f"{folder}/{name} has {path.stat().st_size} bytes, expected {expected['bytes']}")
        if full and _sha256(path) != expected["sha256"]:
            raise ArtifactError(f"{folder}/{name} does not match its recorded SHA-256")
    return manifest


def _move_aside(folder: Path, reason: str) -> None:
    """Keep a damaged artifact for inspection, out of the cache's way."""
    aside = folder.with_name(f"{folder.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    folder.rename(aside)
    print(
        f"⚠ The artifact in {folder} is damaged ({reason}). It was moved to {aside} and will be "
        "rebuilt; delete that folder when you no longer need it."
    )


def _remove_stale_temporaries(stage_dir: Path, key: str) -> None:
    """Leftovers of interrupted builds of this key: never loaded, safe to remove."""
    for tmp in stage_dir.glob(f".tmp-{key}-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def path_for(stage: str, config: Mapping[str, Any]) -> Path:
    """Where the artifact of ``stage`` made with ``config`` lives (whether or not it exists)."""
    return artifacts_dir() / stage / config_key(config)


def exists(stage: str, config: Mapping[str, Any]) -> bool:
    """True when a complete artifact for ``stage`` and ``config`` is in the cache."""
    try:
        verify(path_for(stage, config))
        return True
    except ArtifactError:
        return False


def fetch(stage: str, config: Mapping[str, Any], build: Builder, *, made_by: str) -> Path:
    """Return the folder of ``stage``'s artifact for ``config``, building it if needed.

    ``build(folder, progress)`` writes the artifact's files into ``folder`` and may drive the
    ``progress`` bar (``progress.reset(total=n)``, ``progress.update()``). ``made_by`` names the
    lesson whose reference code ``build`` is, for the note a learner sees.
    """
    final = path_for(stage, config)
    if final.exists():
        try:
            verify(final)
            return final
        except ArtifactError as err:
            _move_aside(final, str(err))

    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(final.parent, final.name)
    print(f"No '{stage}' artifact for this configuration yet: building it with the reference code of {made_by}.")
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with ProgressBar(desc=f"building {stage}", unit="step") as progress:
            build(tmp, progress)
        manifest = {"stage": stage, "config": dict(config), "made_by": made_by,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": _file_table(tmp)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        try:
            tmp.rename(final)  # atomic on one file system
        except OSError:
            if not final.exists():
                raise
            shutil.rmtree(tmp)  # another process finished the same build first: keep theirs
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


@dataclass(frozen=True)
class ArtifactInfo:
    """One row of ``list_artifacts()``."""

    stage: str
    key: str
    made_by: str
    created: str
    megabytes: float
    path: Path


def list_artifacts() -> list[ArtifactInfo]:
    """The complete artifacts in the cache, stage by stage."""
    root = artifacts_dir()
    rows = []
    for folder in sorted(root.glob("*/*")):
        if folder.name.startswith(".") or not (folder / MANIFEST).is_file():
            continue
        try:
            manifest = verify(folder)
        except ArtifactError:
            continue
        size = sum(f["bytes"] for f in manifest["files"].values()) / 1e6
        rows.append(ArtifactInfo(manifest["stage"], folder.name, manifest.get("made_by", "?"),
                                 manifest.get("created", "?"), round(size, 2), folder))
    return rows
