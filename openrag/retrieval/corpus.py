"""A corpus read into passages, and the memory-mapped passage store inside an index.

Accepted corpora: JSON lines of ``{id, title, text}`` (or FlashRAG's ``{id, contents}`` with the title on the
first line), a JSON list of such records, a JSON object ``{title: text or [sentences]}`` (HotpotQA's corpus
files), or a folder of ``.txt``/``.md`` files (also one such file), split into passages of about
``passage_words`` words that overlap by ``passage_overlap`` words.
"""

from __future__ import annotations

import hashlib
import json
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from openrag.retrieval.passage import RetrievedPassage

TEXT_SUFFIXES = (".txt", ".md")


@dataclass
class Corpus:
    path: Path
    passages: list[RetrievedPassage]
    checksum: str  # "sha256:<hex>" of the source bytes (and, for a folder, the file names)


def read_corpus(path: str | Path, passage_words: int = 100, passage_overlap: int = 20) -> Corpus:
    """Read ``path`` into passages; raise ValueError on an empty corpus, duplicate ids or non-UTF-8 text."""
    path = Path(path)
    if passage_overlap < 0 or passage_overlap >= passage_words:
        raise ValueError(f"passage overlap ({passage_overlap}) must be >= 0 and below passage words ({passage_words})")
    if not path.exists():
        raise FileNotFoundError(f"corpus {path} does not exist")
    digest = hashlib.sha256()
    if path.is_dir() or path.suffix.lower() in TEXT_SUFFIXES:
        passages = []
        for file, relative in _text_files(path):
            raw = file.read_bytes()
            _update(digest, relative, raw)
            passages += split_document(_decode(raw, file), title=file.stem, id_prefix=relative,
                                       words=passage_words, overlap=passage_overlap)
    else:
        raw = path.read_bytes()
        digest.update(raw)
        passages = _passages_from_json(_decode(raw, path), path)
    if not passages:
        raise ValueError(f"corpus {path} holds no passages: give a non-empty JSON lines file, JSON list or folder of .txt/.md files")
    _check_unique_ids(passages, path)
    return Corpus(path=path, passages=passages, checksum="sha256:" + digest.hexdigest())


def corpus_checksum(path: str | Path) -> str:
    """The checksum ``read_corpus`` records, computed without parsing (to tell whether a corpus changed)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus {path} does not exist")
    digest = hashlib.sha256()
    if path.is_dir() or path.suffix.lower() in TEXT_SUFFIXES:
        for file, relative in _text_files(path):
            _update(digest, relative, file.read_bytes())
    else:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def split_words(text: str, words: int = 100, overlap: int = 20) -> list[str]:
    """Windows of ``words`` whitespace-separated words, each starting ``words - overlap`` after the last."""
    tokens = text.split()
    if len(tokens) <= words:
        return [" ".join(tokens)] if tokens else []
    step = words - overlap
    return [" ".join(tokens[start:start + words]) for start in range(0, len(tokens) - overlap, step)]


def split_document(text: str, title: str, id_prefix: str, words: int = 100, overlap: int = 20) -> list[RetrievedPassage]:
    return [RetrievedPassage(title=title, text=chunk, id=f"{id_prefix}#{i}")
            for i, chunk in enumerate(split_words(text, words, overlap))]


def _text_files(path: Path) -> list[tuple[Path, str]]:
    if path.is_file():
        return [(path, path.name)]
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES
                   and not any(part.startswith(".") for part in f.relative_to(path).parts))
    if not files:
        raise ValueError(f"corpus folder {path} holds no .txt or .md files")
    return [(f, f.relative_to(path).as_posix()) for f in files]


def _update(digest, relative: str, raw: bytes) -> None:
    digest.update(relative.encode() + b"\0" + str(len(raw)).encode() + b"\0")
    digest.update(raw)


def _decode(raw: bytes, file: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(f"{file} is not UTF-8 (invalid byte at offset {err.start}, line {line}): "
                         f"convert it first, e.g. `iconv -f latin1 -t utf-8`") from None


def _passages_from_json(content: str, path: Path) -> list[RetrievedPassage]:
    stripped = content.lstrip()
    if not stripped:
        return []
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError:
        data = None  # several values: JSON lines
    if isinstance(data, dict) and not _looks_like_record(data):
        return [RetrievedPassage(title=title, text=" ".join(body) if isinstance(body, list) else str(body), id=str(i))
                for i, (title, body) in enumerate(data.items())]
    if isinstance(data, list):
        return [_passage_from_record(record, f"{path}: item {i}", i) for i, record in enumerate(data)]
    if isinstance(data, dict):
        return [_passage_from_record(data, f"{path}: line 1", 0)]
    passages = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {number} is not JSON ({err.msg}); expected JSON lines, a JSON list "
                             f"or a folder of .txt/.md files") from None
        passages.append(_passage_from_record(record, f"{path}: line {number}", len(passages)))
    return passages


def _looks_like_record(data: dict) -> bool:
    return any(key in data for key in ("text", "contents", "paragraph_text"))


def _passage_from_record(record, where: str, position: int) -> RetrievedPassage:
    if not isinstance(record, dict):
        raise ValueError(f"{where} is a {type(record).__name__}, expected an object with 'text' or 'contents'")
    title = record.get("title")
    if "text" in record or "paragraph_text" in record:
        text = record.get("text", record.get("paragraph_text"))
    elif "contents" in record:
        text = record["contents"]
        if title is None and "\n" in text:  # FlashRAG: '"Title"\ntext'
            first, text = text.split("\n", 1)
            title = first.strip().strip('"')
    else:
        raise ValueError(f"{where} has no 'text' or 'contents' field (keys: {', '.join(sorted(record)) or 'none'})")
    if isinstance(text, list):
        text = " ".join(map(str, text))
    passage_id = record.get("id", record.get("_id", position))
    return RetrievedPassage(title=str(title or ""), text=str(text), id=str(passage_id))


def _check_unique_ids(passages: list[RetrievedPassage], path: Path) -> None:
    seen, duplicates = set(), []
    for passage in passages:
        if passage.id in seen:
            duplicates.append(passage.id)
        seen.add(passage.id)
    if duplicates:
        shown = ", ".join(repr(d) for d in duplicates[:5])
        raise ValueError(f"corpus {path} has {len(duplicates)} duplicate passage id(s), e.g. {shown}: ids must be unique")


class PassageStore:
    """The passages of an index: ``passages.jsonl`` read through a memory map, located by ``passage_offsets.npy``."""

    FILE, OFFSETS = "passages.jsonl", "passage_offsets.npy"

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self._offsets = np.load(folder / self.OFFSETS, mmap_mode="r", allow_pickle=False)  # [N + 1] byte offsets
        with open(folder / self.FILE, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    @staticmethod
    def write(folder: str | Path, passages: list[RetrievedPassage]) -> None:
        folder = Path(folder)
        offsets = np.zeros(len(passages) + 1, dtype=np.int64)
        with open(folder / PassageStore.FILE, "wb") as f:
            for i, passage in enumerate(passages):
                line = json.dumps({"id": passage.id, "title": passage.title, "text": passage.text}, ensure_ascii=False)
                offsets[i + 1] = offsets[i] + f.write(line.encode("utf-8") + b"\n")
        np.save(folder / PassageStore.OFFSETS, offsets, allow_pickle=False)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def get(self, row: int, score: float | None = None) -> RetrievedPassage:
        record = json.loads(self._map[self._offsets[row]: self._offsets[row + 1]])
        return RetrievedPassage(title=record["title"], text=record["text"], id=record["id"], score=score)

    def __getitem__(self, row: int) -> RetrievedPassage:
        if not 0 <= row < len(self):
            raise IndexError(row)
        return self.get(row)
