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
- **One builder at a time.** Two processes may want the same missing artifact at once: every
  process of an ``accelerate launch``, or two notebooks. The first to take the artifact's lock
  file builds it; the others print one line, wait, then load the finished folder. The operating
  system drops the lock when its process ends, however it ends, so a crashed builder never
  leaves the others waiting: the next one takes the lock and builds it instead.
- **Never destructive.** A damaged artifact is moved aside (not deleted) and rebuilt.
- **Visible.** Artifacts live in ``artifacts/`` at the course root (git-ignored), or wherever
  ``$RLHF_ARTIFACTS`` points.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from tqdm.auto import tqdm

try:
    import fcntl  # Linux, macOS
except ImportError:  # Windows
    fcntl = None
    import msvcrt

ARTIFACTS_VAR = "RLHF_ARTIFACTS"
MANIFEST = "artifact.json"
LOCKS = ".locks"  # the lock files, one per artifact, in the artifacts folder
WAIT_POLL_SECONDS = 0.1
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
    """Leftovers of interrupted builds of this key: never loaded, safe to remove (by the lock's holder)."""
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


def rank_and_world_size() -> tuple[int, int]:
    """This process's place in a multi-process launch: ``(rank, number of processes)``, ``(0, 1)`` alone.

    ``torchrun`` and ``accelerate launch`` give every process they start ``RANK`` and
    ``WORLD_SIZE``. A process group started another way is asked directly, if ``torch.distributed``
    is already imported: the cache itself never imports torch.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


# --------------------------------------------------------------------------- one builder at a time


def _lock_path(stage: str, key: str) -> Path:
    return artifacts_dir() / LOCKS / f"{stage}-{key}.lock"


def _try_lock(file) -> bool:
    """Take the operating system's lock on ``file`` if no process holds it; True when taken.

    The lock belongs to the open file, not to the file on disk: the system drops it when the
    process closes the file or ends, however it ends (an exception, a crash, ``kill -9``). So
    the lock file left on disk means nothing by itself, and no lock is ever stale.
    """
    try:
        if fcntl is not None:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            file.seek(0)
            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
        return True
    except (BlockingIOError, PermissionError):  # another process holds it (PermissionError: Windows)
        return False


def _unlock(file) -> None:
    if fcntl is not None:
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)
    else:
        file.seek(0)
        msvcrt.locking(file.fileno(), msvcrt.LK_UNLCK, 1)


def _holder(path: Path) -> str:
    """Who holds a lock, as its holder wrote it (``pid 1234 on host``): for the waiting note only."""
    try:
        return path.read_text().strip() or "another process"
    except OSError:  # Windows: the holder's locked byte cannot be read
        return "another process"


def _wait_for_lock(file, path: Path, note: str | None) -> bool:
    """Take the lock, polling while another process holds it; True when it had to wait.

    ``note`` (one line) is printed once, when the wait starts.
    """
    waited = False
    while not _try_lock(file):
        if note and not waited:
            print(note.format(holder=_holder(path)), flush=True)
        waited = True
        time.sleep(WAIT_POLL_SECONDS)
    return waited


@contextlib.contextmanager
def _artifact_lock(stage: str, key: str, note: str | None = None):
    """Hold the lock of one artifact for the ``with`` block; the block gets True if it waited for it.

    A file system that cannot lock (a few network mounts) gets a warning and no lock: the
    builds are then only as safe as the rename that publishes them.
    """
    path = _lock_path(stage, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as file:
        try:
            waited, locked = _wait_for_lock(file, path, note), True
        except OSError as err:  # not "held by another process": locks do not work here
            print(f"⚠ Cannot lock {path} ({err}); building '{stage}' without the lock, so another process "
                  "may build it at the same time.")
            waited, locked = False, False
        try:
            if locked:
                file.seek(0)
                file.truncate()
                file.write(f"pid {os.getpid()} on {socket.gethostname()}")
                file.flush()
            yield waited
        finally:
            if locked:
                _unlock(file)


# ------------------------------------------------------------------------------------------ fetch

_building_alone: list[str] = []  # the stages this process is building under their lock, innermost last


def _ready(final: Path, *, move_damaged: bool = False) -> bool:
    """True when a complete artifact is in place. Only the lock's holder moves a damaged one aside,
    so that two processes never move the same folder (or a good one just built by another)."""
    if not final.exists():
        return False
    try:
        verify(final)
        return True
    except ArtifactError as err:
        if move_damaged:
            _move_aside(final, str(err))
        return False


def _build_into_temporary(stage: str, config: Mapping[str, Any], build: Builder, made_by: str, final: Path,
                          *, show_progress: bool = True) -> Path:
    """Run ``build`` in a new hidden folder beside ``final``, write the manifest last, return the folder.

    The folder is removed if anything goes wrong, so no half-written build is ever left to load.
    """
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        with ProgressBar(desc=f"building {stage}", unit="step", disable=not show_progress) as progress:
            build(tmp, progress)
        manifest = {"stage": stage, "config": dict(config), "made_by": made_by,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": _file_table(tmp)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished build into place in one rename (atomic on one file system): a reader sees
    no folder or the whole folder. If another copy got there first, keep that one."""
    try:
        tmp.rename(final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(tmp)


def _build_alone(stage: str, config: Mapping[str, Any], build: Builder, made_by: str, final: Path) -> None:
    """Build under the artifact's lock: one process builds, any other waits here, then loads it."""
    note = f"⏳ Waiting for another process ({{holder}}) to build '{stage}'; this one will load it when it is done."
    with _artifact_lock(stage, final.name, note) as waited:
        if _ready(final, move_damaged=True):
            return  # built by the process we waited for (or between our first look and the lock)
        if waited:
            print(f"The process that was building '{stage}' stopped before finishing it: "
                  f"building it here with the reference code of {made_by}.")
        else:
            print(f"No '{stage}' artifact for this configuration yet: "
                  f"building it with the reference code of {made_by}.")
        _remove_stale_temporaries(final.parent, final.name)
        _building_alone.append(stage)
        try:
            _publish(_build_into_temporary(stage, config, build, made_by, final), final)
        finally:
            _building_alone.pop()


def _build_together(stage: str, config: Mapping[str, Any], build: Builder, made_by: str, final: Path,
                    rank: int) -> None:
    """Every process of the launch runs ``build`` at once, as its training's collectives need; rank
    0's copy is kept (the copies hold the same model) and the others wait for it, so that no
    process goes on to load a stage before it is in place. Only rank 0 shows the note and the
    progress bar."""
    if _building_alone:
        raise ArtifactError(
            f"'{stage}' trains across every process of this launch, but this process needs it while "
            f"building '{_building_alone[-1]}' alone, with the other processes waiting: they cannot join. "
            f"Build '{stage}' first (`python -m course run {stage}`, or launch that), then launch again.")
    if rank == 0:
        print(f"No '{stage}' artifact for this configuration yet: building it with the reference code of "
              f"{made_by}, every process of this launch together.")
    tmp = _build_into_temporary(stage, config, build, made_by, final, show_progress=rank == 0)
    if rank != 0:
        shutil.rmtree(tmp)
        while not _ready(final):  # rank 0 publishes its copy (a launcher ends every process if it fails)
            time.sleep(WAIT_POLL_SECONDS)
        return
    with _artifact_lock(stage, final.name):
        if _ready(final, move_damaged=True):
            shutil.rmtree(tmp)  # another launch, or a notebook, finished it first
        else:
            _publish(tmp, final)


def fetch(stage: str, config: Mapping[str, Any], build: Builder, *, made_by: str, together: bool = False) -> Path:
    """Return the folder of ``stage``'s artifact for ``config``, building it if needed.

    ``build(folder, progress)`` writes the artifact's files into ``folder`` and may drive the
    ``progress`` bar (``progress.reset(total=n)``, ``progress.update()``). ``made_by`` names the
    lesson whose reference code ``build`` is, for the note a learner sees.

    Several processes may call this at once for the same artifact; one builds it and the others
    wait for it. ``together=True`` is for a ``build`` that trains across processes (trl's Trainer,
    or the course's own data-parallel loops): under ``accelerate launch`` every process must take
    part in that training (a process waiting at a lock would leave the others stuck in their first
    exchange of gradients), so there every process builds and rank 0's copy is kept. Alone, it
    changes nothing.
    """
    final = path_for(stage, config)
    if _ready(final):  # the common case: a finished artifact needs no lock to be read
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    rank, world_size = rank_and_world_size()
    if together and world_size > 1:
        _build_together(stage, config, build, made_by, final, rank)
    else:
        _build_alone(stage, config, build, made_by, final)
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
