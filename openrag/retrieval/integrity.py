"""An index folder's files checked against its manifest when it is opened, before anything else loads.

A build records in the manifest, for every file of the index, its size and a SHA-256 of its first and last MiB
(all of it when smaller): reading 2 MiB a file at each opening is cheap at any corpus size, and catches the usual
damage (a copy cut short, a file overwritten or replaced). Whatever the manifest records, the passage store is
checked for what it must be (offsets that end where ``passages.jsonl`` ends, first and last passage readable) and
every numpy array for a header that fits its file, so that an index built before files were recorded is checked
too. Each failure names the file and how to rebuild.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

FILES = "files"  # the manifest's record: {relative path: {"bytes", "ends_sha256"}}
NOT_INDEX_FILES = ("manifest.json", "build.json")  # the manifest itself; a build's record (removed when it ends)
BUILD_ONLY = "chunks"  # a build's chunk files (removed when it ends)
ENDS = 1 << 20  # bytes read from each end of a file for its checksum


def file_records(folder: Path) -> dict[str, dict]:
    """What the manifest records of each index file in ``folder``: its size and the checksum of its ends."""
    records = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name in NOT_INDEX_FILES or name.split("/", 1)[0] == BUILD_ONLY:
            continue
        records[name] = {"bytes": path.stat().st_size, "ends_sha256": ends_sha256(path)}
    return records


def ends_sha256(path: Path) -> str:
    """SHA-256 of the file's size, its first ``ENDS`` bytes and its last ``ENDS`` bytes (the whole file if smaller)."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(ENDS))
        if size > ENDS:
            f.seek(max(ENDS, size - ENDS))
            digest.update(f.read(ENDS))
    return digest.hexdigest()


class DamagedIndex(ValueError):
    """A file of an index folder is missing, cut short or not what its build wrote."""


def damaged(folder: Path, manifest: dict, name: str, problem: str) -> DamagedIndex:
    corpus = manifest.get("corpus", {}).get("path") or "CORPUS"
    return DamagedIndex(f"index {folder} is damaged: {folder / name} {problem}; rebuild it with "
                        f"`openrag index --corpus {corpus} --output {folder} --overwrite` (and the same settings)")


def unreadable(folder: Path, manifest: dict, err: Exception) -> DamagedIndex:
    """What opening the retriever raised on a file these checks let through (an index that records no files):
    faiss's RuntimeError (its one file is ``dense.faiss``), or the JSON of the BM25 files."""
    from .dense import DenseRetriever

    name = DenseRetriever.FILE if isinstance(err, RuntimeError) else "bm25"
    return damaged(folder, manifest, name, f"cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")


def check_index_files(folder: Path, manifest: dict) -> None:
    """DamagedIndex naming the first file of ``folder`` that is not as its build left it."""
    for name, recorded in (manifest.get(FILES) or {}).items():
        path = folder / name
        if not path.is_file():
            raise damaged(folder, manifest, name, "is missing")
        size = path.stat().st_size
        if size != recorded.get("bytes"):
            raise damaged(folder, manifest, name, f"holds {size:,} bytes, its build wrote {recorded.get('bytes'):,}")
        if ends_sha256(path) != recorded.get("ends_sha256"):
            raise damaged(folder, manifest, name, "is not the file its build wrote (its checksum differs)")
    for path in sorted(folder.rglob("*.npy")):
        _check_array(folder, manifest, path)
    _check_passages(folder, manifest)


def _check_array(folder: Path, manifest: dict, path: Path) -> None:
    try:
        np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:  # a header cut short, or an array longer than the file
        raise damaged(folder, manifest, path.relative_to(folder).as_posix(), f"is not a whole numpy array ({err})") from None


def _check_passages(folder: Path, manifest: dict) -> None:
    """The offsets count the manifest's passages and end where ``passages.jsonl`` ends; its first and last
    passages are JSON objects with a text."""
    from .corpus import PassageStore

    store, offsets_file = folder / PassageStore.FILE, PassageStore.OFFSETS
    if not store.is_file():
        raise damaged(folder, manifest, PassageStore.FILE, "is missing")
    if not (folder / offsets_file).is_file():
        raise damaged(folder, manifest, offsets_file, "is missing")
    offsets = np.load(folder / offsets_file, mmap_mode="r", allow_pickle=False)  # [N + 1]
    expected = manifest.get("corpus", {}).get("passages")
    if offsets.ndim != 1 or len(offsets) != expected + 1 or int(offsets[0]) != 0:
        raise damaged(folder, manifest, offsets_file, f"locates {max(len(offsets) - 1, 0):,} passages, the manifest "
                      f"counts {expected:,}")
    size = store.stat().st_size
    if int(offsets[-1]) != size:
        raise damaged(folder, manifest, PassageStore.FILE, f"holds {size:,} bytes, its passages end at byte "
                      f"{int(offsets[-1]):,} ({offsets_file})")
    with open(store, "rb") as f:
        for row in dict.fromkeys((0, expected - 1)):
            f.seek(int(offsets[row]))
            line = f.read(int(offsets[row + 1]) - int(offsets[row]))
            try:
                record = json.loads(line)
            except ValueError:  # not UTF-8, or not JSON
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise damaged(folder, manifest, PassageStore.FILE, f"line {row + 1} is not a passage (JSON with a text)")
