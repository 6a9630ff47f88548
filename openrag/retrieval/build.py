"""Building an index folder in bounded memory, resumably, on one machine or in shards.

A build runs in ``.NAME.building`` beside the output folder, in three stages:

1. **passages**: the corpus is streamed into ``passages.jsonl`` + ``passage_offsets.npy`` (memory: 16 bytes a
   passage for offsets and id hashes); duplicate ids and an empty corpus are reported here, before any embedding.
2. **chunks**: rows ``[k * chunk_size, (k + 1) * chunk_size)`` are read back from that memory-mapped store and
   handed to each writer of the kind (:class:`~openrag.retrieval.bm25.BM25Writer`,
   :class:`~openrag.retrieval.dense.DenseWriter`), which writes ``chunks/NAME-K.*`` through a temporary name:
   a chunk's file exists only when the chunk is finished.
3. **finish**: the writers assemble their index files from the chunk files, the manifest is written, the chunk
   files are deleted and the folder is renamed to the output.

``build.json`` records what the build is of (settings, corpus checksum, chunk size, shard). A build that stops
(killed, interrupted, out of memory) keeps its folder; the same command run again finds it, checks that record
and goes on from the chunks not yet finished (stage 1 is redone if it had not finished: it is cheap). A build that
stops before finishing any chunk (a bad corpus, a refused setting) leaves nothing behind. A build of anything else
in its place is thrown away and started over. The output folder only ever holds a whole index.

With ``shard=(i, n)`` a build embeds only the chunks ``k % n == i`` and is then renamed to the output as a shard
folder (``build.json`` marked complete, no manifest); :func:`merge_shards` assembles the shards' chunk files
exactly as a single build's stage 3 does, so shard + merge gives the index a single build gives.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from openrag.jsonfiles import read_json_object
from openrag.outputs import write_json
from openrag.retrieval.corpus import (
    PassageStore,
    corpus_checksum,
    duplicate_ids,
    duplicate_ids_message,
    empty_corpus_message,
    iter_passages,
)

BUILD = "build.json"
CHUNKS = "chunks"
BUILD_FORMAT = "openrag-index-build"


@dataclass(frozen=True)
class BuildOptions:
    """How a build runs; none of it changes the index's contents (so none of it is in the manifest's settings)."""

    chunk_size: int = 10_000  # passages per chunk: the unit of memory, of progress and of resuming
    batch_size: int = 64  # dense: passages embedded per batch
    device: str | None = None  # dense: cpu, cuda, cuda:1, ... (None: the best there is)
    show_progress: bool = True
    shard: tuple[int, int] | None = None  # (i, n): embed chunks k with k % n == i only

    def __post_init__(self):
        if self.chunk_size < 1:
            raise ValueError(f"chunk size must be at least 1, got {self.chunk_size}")
        if self.shard is not None:
            i, n = self.shard
            if not (n >= 1 and 0 <= i < n):
                raise ValueError(f"shard {i}/{n}: give i/n with 0 <= i < n, e.g. 0/4 ... 3/4")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n)."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes i/n (this machine's part i of n, from 0), got {text!r}") from None
    BuildOptions(shard=(i, n))
    return i, n


def building_folder(output: Path) -> Path:
    return output.with_name(f".{output.name}.building")


def run_build(corpus: Path, output: Path, key: dict, writers: list, options: BuildOptions, finish) -> None:
    """Stages 1-3 in ``building_folder(output)`` (resumed when its record matches ``key``), then the rename.
    ``finish(folder, passages)`` writes the manifest; it is not called for a shard."""
    building = building_folder(output)
    record = _resume_or_start(building, key)
    record["corpus_path"] = str(Path(corpus).resolve())
    try:
        if record.get("passages") is None:
            record["passages"] = _write_passages(corpus, building, key)
            _write_record(building, record)
        passages = record["passages"]
        for writer in writers:
            if hasattr(writer, "check"):
                writer.check(passages)
        _embed_chunks(building, writers, passages, options)
    except BaseException as err:
        if not _finished_chunks(building):  # nothing worth keeping: reading the corpus again is cheap
            shutil.rmtree(building, ignore_errors=True)
        else:
            print(f"openrag index: stopped ({type(err).__name__}); the finished chunks are kept in {building}: run "
                  f"the same command again to go on from there (or delete that folder)", file=sys.stderr)
        raise
    if options.shard is not None:
        record["complete"] = True
        _write_record(building, record)
        replace_folder(building, output)
        return
    sources = [building / CHUNKS] * chunk_count(passages, key["chunk_size"])
    assemble(building, writers, sources, passages, options.show_progress)
    finish(building, passages)
    (building / BUILD).unlink()  # first: a kill between the two must not look like a resumable build
    shutil.rmtree(building / CHUNKS)
    replace_folder(building, output)


def merge_shards(shards: list[Path], output: Path, writers: list, finish, show_progress: bool = True) -> None:
    """Assemble the index from the complete shard folders ``shards`` (all parts of one sharded build) into
    ``output`` with the kind's ``writers``, as stage 3 of a single build does; ``finish`` writes the manifest."""
    records = [read_record(shard) for shard in shards]
    key = records[0]["key"]
    n = key["shard"][1] if key.get("shard") else None
    for shard, record in zip(shards, records):
        if not record.get("complete") or not record["key"].get("shard"):
            raise ValueError(f"{shard} is not a finished shard: finish it with its `openrag index ... --shard i/n` command")
        if record["key"]["shard"][1] != n:
            i, m = record["key"]["shard"]
            raise ValueError(f"{shard} is shard {i}/{m} and {shards[0]} is shard {key['shard'][0]}/{n}: different shard "
                             f"counts, so not parts of one build; merge the {n} shards of one build")
        if _unsharded(record["key"]) != _unsharded(key):
            raise ValueError(f"{shard} is a shard of another build than {shards[0]} (other corpus, settings or chunk "
                             f"size): merge the shards of one build")
    parts = sorted(record["key"]["shard"][0] for record in records)
    if parts != list(range(n)):
        missing = sorted(set(range(n)) - set(parts))
        raise ValueError(f"merging needs each of the {n} shards once; got parts {parts}" +
                         (f", missing {', '.join(f'{i}/{n}' for i in missing)}" if missing else ""))
    by_part = {record["key"]["shard"][0]: shard for record, shard in zip(records, shards)}
    passages = records[0]["passages"]
    sources = [Path(by_part[k % n]) / CHUNKS for k in range(chunk_count(passages, key["chunk_size"]))]
    building = building_folder(output)
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    _set_mode(building)
    try:
        for name in (PassageStore.FILE, PassageStore.OFFSETS):
            link_or_copy(Path(by_part[0]) / name, building / name)
        assemble(building, writers, sources, passages, show_progress)
        finish(building, passages)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    replace_folder(building, output)


def assemble(folder: Path, writers: list, sources: list[Path], passages: int, show_progress: bool) -> None:
    for writer in writers:
        missing = [k for k, chunks in enumerate(sources) if not writer.done(chunks, k)]
        if missing:
            raise ValueError(f"chunk {missing[0]} of the {writer.name} index is missing from {sources[missing[0]]}")
        writer.finish(folder, sources, passages, show_progress)


def chunk_count(passages: int, chunk_size: int) -> int:
    return -(-passages // chunk_size)


def read_record(folder: Path) -> dict:
    path = Path(folder) / BUILD
    if not path.is_file():
        raise ValueError(f"{folder} is not an openrag index shard (no {BUILD}): give the folders written by "
                         f"`openrag index ... --shard i/n`")
    record = read_json_object(path, "rebuild this shard with the same `openrag index ... --shard i/n` command")
    if record.get("format") != BUILD_FORMAT:
        raise ValueError(f"{path} is not an openrag build record")
    return record


def not_an_index(folder: Path) -> str:
    """Why ``folder``, which holds a build record and no manifest, cannot be opened as an index, and what to do."""
    try:
        record = read_record(folder)
    except ValueError:
        record = {}
    if record.get("complete") and record.get("key", {}).get("shard"):
        return (f"{folder} is one shard of a sharded build, not an index: merge the shards with "
                f"`openrag index --merge SHARD_FOLDERS... --output INDEX`")
    name = folder.name
    output = folder.with_name(name[1 : -len(".building")]) if name.startswith(".") and name.endswith(".building") else None
    corpus = record.get("corpus_path") or "CORPUS"
    return (f"{folder} is a build that did not finish (stopped, killed or still running), not an index: run the same "
            f"`openrag index --corpus {corpus} --output {output or 'INDEX'}` command again to resume it"
            + (f", then open {output}" if output else "") + "; or delete the folder to start over")


def replace_folder(building: Path, output: Path) -> None:
    """Rename ``building`` to ``output``; an old ``output`` is moved aside first and deleted after."""
    if not output.exists():
        os.rename(building, output)
        return
    retired = output.with_name(f".{output.name}.replaced-{os.getpid()}")
    os.rename(output, retired)
    os.rename(building, output)
    shutil.rmtree(retired, ignore_errors=True)


def _resume_or_start(building: Path, key: dict) -> dict:
    if building.is_dir():
        try:
            record = read_record(building)
        except ValueError:  # an unreadable record: start the build again
            record = None
        if record is not None and record["key"] == key and not record.get("complete"):
            if record.get("passages") is None:  # stage 1 had not finished: redo it
                return _start(building, key)
            print(f"openrag index: resuming the build in {building}", file=sys.stderr)
            return record
        print(f"openrag index: {building} holds a build of something else; starting over", file=sys.stderr)
        shutil.rmtree(building)
    return _start(building, key)


def _start(building: Path, key: dict) -> dict:
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    _set_mode(building)
    (building / CHUNKS).mkdir()
    record = {"format": BUILD_FORMAT, "key": key, "passages": None, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _write_record(building, record)
    return record


def _write_record(building: Path, record: dict) -> None:
    write_json(building / BUILD, record)


def _write_passages(corpus: Path, building: Path, key: dict) -> int:
    settings = key["settings"]
    hashes = PassageStore.write(building, iter_passages(corpus, settings["passage_words"], settings["passage_overlap"]))
    if len(hashes) == 0:
        raise ValueError(empty_corpus_message(corpus))
    with PassageStore(building) as store:
        duplicates = duplicate_ids(store, hashes)
    if duplicates:
        raise ValueError(duplicate_ids_message(corpus, duplicates))
    if corpus_checksum(corpus) != key["checksum"]:
        raise ValueError(f"corpus {corpus} changed while it was being read: build again when it no longer changes")
    return len(hashes)


def _embed_chunks(building: Path, writers: list, passages: int, options: BuildOptions) -> None:
    chunks = building / CHUNKS
    mine = [k for k in range(chunk_count(passages, options.chunk_size))
            if options.shard is None or k % options.shard[1] == options.shard[0]]
    progress = _progress(len(mine), options.show_progress)
    with PassageStore(building) as store:
        for k in mine:
            pending = [w for w in writers if not w.done(chunks, k)]
            if pending:
                texts = store.texts(k * options.chunk_size, min(passages, (k + 1) * options.chunk_size))
                for writer in pending:
                    writer.add(chunks, k, texts)
            progress.update(1)
    progress.close()


def _finished_chunks(building: Path) -> bool:
    chunks = building / CHUNKS
    return chunks.is_dir() and any(not f.name.startswith(".") for f in chunks.iterdir())  # not write_atomic's temporary files


def _progress(total: int, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="openrag index: chunks", unit="chunk", disable=not show)


def _set_mode(folder: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` where they share a file system (no second copy of a large passage
    store or faiss index), else as a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _unsharded(key: dict) -> dict:
    return {name: value for name, value in key.items() if name != "shard"}
