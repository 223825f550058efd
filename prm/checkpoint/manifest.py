"""Manifests and verification: a checkpoint counts only if every file matches its ``manifest.json``.

The manifest is written last, after every other file of the checkpoint: a folder whose manifest is
missing, or whose listed files are missing, of another size or of another sha256, is incomplete
(a killed save, a truncated copy) or damaged, and is never resumed from.

Hashing a multi-GB model is slow, so a caller that verifies the same folders again (pruning at
every save, an evaluation resolving a checkpoint twice) passes a :data:`VerifiedFolders` dictionary
it owns; nothing is remembered between calls otherwise.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prm.checkpoint.layout import FORMAT, LEGACY_STATE, MANIFEST, STATE_JSON

# A folder's resolved path -> the (relative name, size, mtime in ns, inode) of every file its manifest
# lists, as they were when the folder was hashed and found complete.
VerifiedFolders = dict[Path, tuple[tuple[str, int, int, int], ...]]


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, step: int) -> None:
    """``manifest.json``: every file under ``folder`` (relative path) with its size (bytes) and sha256,
    plus the format and ``step``."""
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in _files(folder)
    }
    text = json.dumps({"format": FORMAT, "step": step, "files": files}, indent=1)
    (folder / MANIFEST).write_text(text, encoding="utf-8")


def verify_checkpoint(folder: str | Path, verified: VerifiedFolders | None = None) -> str | None:
    """None when ``folder`` is a complete checkpoint, else why not (a short reason for the log).

    Complete: ``manifest.json`` parses, and every file it lists exists with the listed size and
    sha256 (files not listed are ignored). Cost: one read of every file, skipped when ``verified``
    (the caller's record of earlier verifications, updated here) holds the folder and no listed
    file's size, mtime or inode changed since.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return "not a folder"
    if not (folder / MANIFEST).is_file():
        if (folder / LEGACY_STATE).exists():
            return f"no {MANIFEST}: written by an older version (its pickled {LEGACY_STATE} is never loaded)"
        return f"no {MANIFEST} (an incomplete or foreign folder)"
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as error:
        return f"{MANIFEST} unreadable ({error!r})"
    if STATE_JSON not in files:
        return f"{MANIFEST} lists no {STATE_JSON}"
    signature = []
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} missing"
        stat = path.stat()
        if stat.st_size != entry["size"]:
            return (
                f"{name} has {stat.st_size} bytes, the manifest says {entry['size']} (truncated or replaced)"
            )
        signature.append((name, stat.st_size, stat.st_mtime_ns, stat.st_ino))
    key, signature = folder.resolve(), tuple(signature)
    if verified is not None and verified.get(key) == signature:  # hashed before, no file touched since
        return None
    for name, entry in files.items():
        if _sha256(folder / name) != entry["sha256"]:
            return f"{name}: sha256 differs from the manifest (corrupted)"
    if verified is not None:
        verified[key] = signature
    return None
