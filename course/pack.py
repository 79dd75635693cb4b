"""Packs: train the course's stages once, then hand the artifacts to every laptop in a workshop.

Each stage (tokenizer, base model, SFT, reward model, PPO ...) is built once and kept in the
artifact cache (:mod:`rlhf_helpers.artifacts`). In a workshop, thirty laptops building the same
artifacts is thirty times the waiting; an instructor can instead build them once and share them:

- ``pack(destination)`` writes ONE ``.tar.gz`` with every complete artifact in the cache and a
  ``pack.json`` manifest saying which profile and which locked library versions made them;
- ``unpack(archive)`` checks that archive and installs its artifacts into this machine's cache.

An archive from someone else is untrusted input, so ``unpack`` is safe and all-or-nothing:

- **Nothing escapes the cache.** Every member is checked *before anything is extracted*: no
  absolute paths, no ``..``, no links or devices, nothing outside a listed ``<stage>/<key>/``
  folder. ``tarfile``'s ``"data"`` filter then checks again while extracting.
- **Same configuration, same libraries.** An artifact's key is a hash of its configuration, not of
  the code or libraries that ran it. A pack from another profile, or from other versions of torch,
  transformers, trl, peft or tokenizers, is refused unless ``force=True`` says to take it anyway.
- **Verified before it is visible.** Everything is extracted into a hidden temporary folder inside
  the cache and every file is re-hashed against its artifact's ``artifact.json``; only then is each
  artifact folder renamed into place (a rename on one file system is atomic).
- **Never destructive.** An artifact already in the cache is left as it is (same key, same
  configuration: the same artifact), and on any error the cache is exactly as it was before.

Every refusal is a :class:`~rlhf_helpers.env.CourseConfigError` whose message says what is wrong
and what to do.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import time
import uuid
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from course.lock import read_lock
from rlhf_helpers.artifacts import MANIFEST, ArtifactError, artifacts_dir, verify
from rlhf_helpers.env import CourseConfigError, get_profile

PACK_MANIFEST = "pack.json"
FORMAT = 1
# The libraries whose version changes what a saved model means or how it loads.
CHECKED_PACKAGES = ("torch", "transformers", "trl", "peft", "tokenizers")
# A stage or key is one plain folder name: no separators, no hidden or relative names.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ----------------------------------------------------------------------------------------- pack


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _artifact_folders(root: Path) -> list[Path]:
    """Every ``<stage>/<key>/`` folder in the cache, without temporaries and damaged copies.

    Anything else in the cache (the learner's ``my_labels.jsonl``, stray files) is not an artifact.
    """
    if not root.is_dir():
        return []
    folders = []
    for stage_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        if not _SAFE_NAME.match(stage_dir.name):
            continue  # ".unpack-..." and other hidden folders are temporaries
        for folder in sorted(p for p in stage_dir.iterdir() if p.is_dir() and not p.is_symlink()):
            if _SAFE_NAME.match(folder.name) and ".damaged-" not in folder.name:
                folders.append(folder)
    return folders


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add an in-memory file (the pack manifest) to the archive."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))


def pack(destination: Path, *, profile: str | None = None) -> Path:
    """Write every complete artifact in the cache into one ``.tar.gz`` at ``destination``.

    ``destination`` may be a folder, where the archive is named after the profile. Artifacts
    that fail a full check (every file re-hashed) are skipped, with one line saying so. Returns
    the archive's path.
    """
    destination = Path(destination).expanduser()
    profile_name = get_profile(profile).name
    if destination.is_dir():
        destination = destination / f"rlhf-artifacts-{profile_name}.tar.gz"

    # 1. Choose the artifacts: only those whose every file still matches its manifest.
    chosen: list[tuple[Path, dict[str, Any]]] = []
    for folder in _artifact_folders(artifacts_dir()):
        try:
            manifest = verify(folder, full=True)
            if manifest.get("stage") != folder.parent.name:  # unpack would refuse the whole pack
                raise ArtifactError(f"its {MANIFEST} names the stage {manifest.get('stage')!r}")
        except ArtifactError as err:
            print(f"⚠ Skipped {folder.parent.name}/{folder.name}: {err}")
            continue
        chosen.append((folder, manifest))

    # 2. The pack manifest: profile, locked versions, and a hash of each artifact's own manifest.
    entries = [{"stage": folder.parent.name, "key": folder.name,
                "sha256_of_manifest": _sha256_bytes((folder / MANIFEST).read_bytes())}
               for folder, _ in chosen]
    pack_manifest = {"format": FORMAT, "profile": profile_name, "versions": read_lock(), "artifacts": entries}

    # 3. Write a temporary file next to the destination, then rename it: never a half archive.
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f".{destination.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with tarfile.open(tmp, "w:gz", dereference=True) as tar:  # a link is stored as the file it names
            _add_bytes(tar, PACK_MANIFEST, json.dumps(pack_manifest, indent=2).encode())
            for folder, manifest in chosen:
                prefix = f"{folder.parent.name}/{folder.name}"
                # only the files the manifest vouches for, and the manifest itself
                for name in [MANIFEST, *sorted(manifest["files"])]:
                    tar.add(folder / name, arcname=f"{prefix}/{name}", recursive=False)
        os.replace(tmp, destination)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return destination


# --------------------------------------------------------------------------------------- unpack


def _refuse(archive: Path, problem: str, advice: str) -> CourseConfigError:
    return CourseConfigError(f"{archive} {problem}: nothing was installed; {advice}.")


def _unsafe(name: str) -> bool:
    """True for a member name that could land outside the folder it is extracted into."""
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    return (not name or posix.is_absolute() or windows.is_absolute() or bool(windows.drive)
            or ".." in posix.parts or ".." in windows.parts)


def _check_members(archive: Path, members: list[tarfile.TarInfo]) -> None:
    """Refuse the archive if any member is unsafe; runs before anything is extracted."""
    for member in members:
        if _unsafe(member.name):
            raise _refuse(archive, f"contains the unsafe path {member.name!r} (absolute or with '..')",
                          "an archive made by `pack` never has one, so do not use this file")
        if not (member.isfile() or member.isdir()):
            raise _refuse(archive, f"contains {member.name!r}, which is a link or a device, not a plain file",
                          "an archive made by `pack` never has one, so do not use this file")


def _read_pack_manifest(archive: Path, tar: tarfile.TarFile) -> dict[str, Any]:
    """The archive's ``pack.json``, checked field by field."""
    try:
        data = json.loads(tar.extractfile(PACK_MANIFEST).read())
    except (KeyError, AttributeError, ValueError):
        raise _refuse(archive, f"has no readable {PACK_MANIFEST}",
                      "make the archive with `python -m course pack`") from None
    entries = data.get("artifacts") if isinstance(data, dict) else None
    well_formed = (
        isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("profile"), str)
        and isinstance(data.get("versions"), dict) and isinstance(entries, list)
        and all(isinstance(e, dict) and all(isinstance(e.get(k), str) for k in ("stage", "key", "sha256_of_manifest"))
                and _SAFE_NAME.match(e["stage"]) and _SAFE_NAME.match(e["key"]) for e in entries)
    )
    if not well_formed:
        raise _refuse(archive, f"has an invalid {PACK_MANIFEST} (not format {FORMAT}, or a field is missing)",
                      "make the archive again with this course's `python -m course pack`")
    if len({(e["stage"], e["key"]) for e in entries}) != len(entries):
        raise _refuse(archive, f"lists an artifact twice in {PACK_MANIFEST}", "make the archive again")
    return data


def _check_layout(archive: Path, members: list[tarfile.TarInfo], entries: list[dict[str, str]]) -> None:
    """Every member must be ``pack.json`` or lie inside an artifact folder the manifest lists."""
    listed = {(e["stage"], e["key"]) for e in entries}
    for member in members:
        parts = PurePosixPath(member.name).parts
        inside = len(parts) >= 3 and parts[:2] in listed
        a_listed_folder = member.isdir() and any(parts == pair[:len(parts)] for pair in listed)
        if parts != (PACK_MANIFEST,) and not inside and not a_listed_folder:
            raise _refuse(archive, f"contains {member.name!r}, which is not inside an artifact listed in "
                          f"{PACK_MANIFEST}", "do not use this file; make the archive again with `pack`")


def _check_compatible(archive: Path, data: dict[str, Any], profile: str | None) -> None:
    """The pack must come from this profile and the same versions of the libraries that matter."""
    active = get_profile(profile).name
    if data["profile"] != active:
        raise _refuse(archive, f"was made with the '{data['profile']}' profile but this machine uses '{active}'",
                      f"use a pack made with the '{active}' profile, or add --force (force=True from Python) to install it anyway")
    locked = read_lock()
    for package in CHECKED_PACKAGES:
        theirs, ours = data["versions"].get(package), locked.get(package)
        if theirs != ours:
            raise _refuse(archive, f"was made with {package} {theirs or '(not recorded)'} but this course is "
                          f"locked to {package} {ours or '(not recorded)'}",
                          "use a pack made with the same requirements.lock, or add --force (force=True from Python) to install it anyway")


def _verify_extracted(archive: Path, staging: Path, entries: list[dict[str, str]]) -> None:
    """Each extracted artifact must match its own manifest, and that manifest the pack's hash."""
    for entry in entries:
        stage, key = entry["stage"], entry["key"]
        folder = staging / stage / key
        try:
            if _sha256_bytes((folder / MANIFEST).read_bytes()) != entry["sha256_of_manifest"]:
                raise ArtifactError(f"its {MANIFEST} does not match the hash in {PACK_MANIFEST}")
            manifest = verify(folder, full=True)
            if manifest.get("stage") != stage:
                raise ArtifactError(f"its {MANIFEST} names the stage {manifest.get('stage')!r}")
            extra = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
            extra -= {MANIFEST, *manifest["files"]}
            if extra:
                raise ArtifactError(f"it holds files its {MANIFEST} does not list: {', '.join(sorted(extra))}")
        except (OSError, ArtifactError) as err:
            raise _refuse(archive, f"has a damaged artifact {stage}/{key} ({err})",
                          "the file was changed or damaged after packing: ask for a fresh copy") from None


def _install(staging: Path, root: Path, entries: list[dict[str, str]]) -> list[str]:
    """Rename each verified artifact into place; an artifact already there is left untouched."""
    installed: list[Path] = []
    new_stage_dirs: list[Path] = []
    try:
        for entry in entries:
            final = root / entry["stage"] / entry["key"]
            if final.exists():
                continue  # same stage and key: the same configuration, so the same artifact
            if not final.parent.exists():
                final.parent.mkdir()
                new_stage_dirs.append(final.parent)
            try:
                os.rename(staging / entry["stage"] / entry["key"], final)  # atomic on one file system
            except OSError:
                if not final.exists():
                    raise  # else another process installed the same artifact first: keep theirs
                continue
            installed.append(final)
    except BaseException:
        # all or nothing: take back what this call added, and only that
        for folder in installed:
            shutil.rmtree(folder, ignore_errors=True)
        for stage_dir in new_stage_dirs:
            try:
                stage_dir.rmdir()  # only if still empty
            except OSError:
                pass
        raise
    return [f"{folder.parent.name}/{folder.name}" for folder in installed]


def unpack(archive: Path, *, profile: str | None = None, force: bool = False) -> list[str]:
    """Check ``archive`` (made by :func:`pack`) and install its artifacts into the cache.

    Returns the ``"stage/key"`` of each artifact installed; those already in the cache are left
    as they are. Raises ``CourseConfigError`` (and changes nothing) when the archive is unreadable,
    unsafe, damaged, or from another profile or other library versions (unless ``force``).
    """
    archive = Path(archive).expanduser()
    root = artifacts_dir()
    root_existed = root.exists()
    staging = root / f".unpack-{uuid.uuid4().hex[:8]}"
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                # 1. Read the member list (this reads the whole archive); check every member.
                members = tar.getmembers()
                _check_members(archive, members)
                # 2. Read and check pack.json, the layout, the profile and the library versions.
                data = _read_pack_manifest(archive, tar)
                _check_layout(archive, members, data["artifacts"])
                if not force:
                    _check_compatible(archive, data, profile)
                # 3. Extract the artifacts into a hidden folder inside the cache (same file system).
                staging.mkdir(parents=True)
                wanted = [m for m in members if m.name != PACK_MANIFEST]
                if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: tarfile checks each member too
                    tar.extractall(staging, members=wanted, filter="data")
                else:
                    tar.extractall(staging, members=wanted)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
            raise _refuse(archive, f"is not a readable .tar.gz archive ({err})",
                          "copy it again, or make a new one with `python -m course pack`") from None
        # 4. Verify every file, then move each artifact into place.
        _verify_extracted(archive, staging, data["artifacts"])
        return _install(staging, root, data["artifacts"])
    finally:
        # 5. Whatever happened, leave no temporary folder (nor a cache folder this call created).
        shutil.rmtree(staging, ignore_errors=True)
        if not root_existed and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
