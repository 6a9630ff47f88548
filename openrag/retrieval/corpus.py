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
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from openrag.passage import Passage, titled_text

TEXT_SUFFIXES = (".txt", ".md")
PASSAGE_WORDS = 100  # folder corpora: words per passage
PASSAGE_OVERLAP = 20  # folder corpora: words shared by consecutive passages


@dataclass
class Corpus:
    path: Path
    passages: list[Passage]
    checksum: str  # "sha256:<hex>" of the source bytes (and, for a folder, the file names)


def read_corpus(path: str | Path, passage_words: int = PASSAGE_WORDS, passage_overlap: int = PASSAGE_OVERLAP) -> Corpus:
    """Read ``path`` into passages; raise ValueError on an empty corpus, duplicate ids or non-UTF-8 text."""
    path = Path(path)
    passages = list(iter_passages(path, passage_words, passage_overlap))
    if not passages:
        raise ValueError(empty_corpus_message(path))
    _check_unique_ids(passages, path)
    return Corpus(path=path, passages=passages, checksum=corpus_checksum(path))


def iter_passages(path: str | Path, passage_words: int = PASSAGE_WORDS,
                  passage_overlap: int = PASSAGE_OVERLAP) -> Iterator[Passage]:
    """The passages of ``path`` one at a time, without holding the corpus in memory: JSON lines are read line by
    line and folders file by file (a JSON list or a JSON object is parsed whole: those are small-corpus formats).
    Raises ValueError naming the file and line of malformed or non-UTF-8 input; ids are not checked here."""
    path = Path(path)
    if passage_overlap < 0 or passage_overlap >= passage_words:
        raise ValueError(f"passage overlap ({passage_overlap}) must be >= 0 and below passage words ({passage_words})")
    if not path.exists():
        raise FileNotFoundError(f"corpus {path} does not exist")
    if path.is_dir() or path.suffix.lower() in TEXT_SUFFIXES:
        for file, relative in _text_files(path):
            yield from split_document(_decode(file.read_bytes(), file), title=file.stem, id_prefix=relative,
                                      words=passage_words, overlap=passage_overlap)
    elif _is_json_lines(path):
        yield from _passages_from_json_lines(path)
    else:
        yield from _passages_from_json(_decode(path.read_bytes(), path), path)


def empty_corpus_message(path: Path) -> str:
    return f"corpus {path} holds no passages: give a non-empty JSON lines file, JSON list or folder of .txt/.md files"


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


def split_words(text: str, words: int = PASSAGE_WORDS, overlap: int = PASSAGE_OVERLAP) -> list[str]:
    """Windows of ``words`` whitespace-separated words, each starting ``words - overlap`` after the last."""
    tokens = text.split()
    if len(tokens) <= words:
        return [" ".join(tokens)] if tokens else []
    step = words - overlap
    return [" ".join(tokens[start:start + words]) for start in range(0, len(tokens) - overlap, step)]


def split_document(text: str, title: str, id_prefix: str, words: int = PASSAGE_WORDS,
                   overlap: int = PASSAGE_OVERLAP) -> list[Passage]:
    return [Passage(title=title, text=chunk, id=f"{id_prefix}#{i}")
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
        raise ValueError(_not_utf8(file, err.start, raw[: err.start].count(b"\n") + 1)) from None


def _not_utf8(file: Path, offset: int, line: int) -> str:
    return (f"{file} is not UTF-8 (invalid byte at offset {offset}, line {line}): "
            f"convert it first, e.g. `iconv -f latin1 -t utf-8`")


def _passages_from_json(content: str, path: Path) -> list[Passage]:
    stripped = content.lstrip()
    if not stripped:
        return []
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError:
        data = None  # several values: JSON lines
    if isinstance(data, dict) and not _looks_like_record(data):
        return [Passage(title=title, text=" ".join(body) if isinstance(body, list) else str(body), id=str(i))
                for i, (title, body) in enumerate(data.items())]
    if isinstance(data, list):
        return [_passage_from_record(record, f"{path}: item {i}", i) for i, record in enumerate(data)]
    if isinstance(data, dict):
        return [_passage_from_record(data, f"{path}: line 1", 0)]
    passages = []
    for number, line in enumerate(content.splitlines(), start=1):
        if line.strip():
            passages.append(_passage_from_line(line, path, number, len(passages)))
    return passages


def _is_json_lines(path: Path) -> bool:
    """True when the first non-blank line is a whole JSON object and another line follows (JSON lines); a single
    object, a list or a pretty-printed file is parsed whole, as before."""
    lines = []
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                lines.append(raw)
                if len(lines) == 2:
                    break
    if len(lines) < 2:
        return False
    try:
        return isinstance(json.loads(lines[0].decode("utf-8-sig")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def _passages_from_json_lines(path: Path) -> Iterator[Passage]:
    position, offset = 0, 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(_not_utf8(path, offset + err.start, number)) from None
            offset += len(raw)
            if line.strip():
                yield _passage_from_line(line, path, number, position)
                position += 1


def _passage_from_line(line: str, path: Path, number: int, position: int) -> Passage:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {number} is not JSON ({err.msg}); expected JSON lines, a JSON list "
                         f"or a folder of .txt/.md files") from None
    return _passage_from_record(record, f"{path}: line {number}", position)


def _looks_like_record(data: dict) -> bool:
    return any(key in data for key in ("text", "contents", "paragraph_text"))


def _passage_from_record(record, where: str, position: int) -> Passage:
    if not isinstance(record, dict):
        raise ValueError(f"{where} is a {type(record).__name__}, expected an object with 'text' or 'contents'")
    title = record.get("title")
    names = [name for name in ("text", "paragraph_text", "contents") if name in record]
    if not names:
        raise ValueError(f"{where} has no 'text' or 'contents' field (keys: {', '.join(sorted(record)) or 'none'})")
    name = names[0]
    text = record[name]
    if isinstance(text, list) and all(isinstance(part, str) for part in text):  # sentences, as in HotpotQA
        text = " ".join(text)
    if not isinstance(text, str):
        raise ValueError(f"{where}: field '{name}' must be a string (or a list of strings), got {type(text).__name__}")
    if title is not None and not isinstance(title, str):
        raise ValueError(f"{where}: field 'title' must be a string, got {type(title).__name__}")
    if name == "contents" and title is None and "\n" in text:  # FlashRAG: '"Title"\ntext'
        first, text = text.split("\n", 1)
        title = first.strip().strip('"')
    passage_id = record.get("id", record.get("_id", position))
    return Passage(title=title or "", text=text, id=str(passage_id))


def _check_unique_ids(passages: list[Passage], path: Path) -> None:
    seen, duplicates = set(), []
    for passage in passages:
        if passage.id in seen:
            duplicates.append(passage.id)
        seen.add(passage.id)
    if duplicates:
        raise ValueError(duplicate_ids_message(path, duplicates))


def id_hash(passage_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(passage_id.encode("utf-8"), digest_size=8).digest(), "little")


def duplicate_ids(store: "PassageStore", hashes: np.ndarray) -> list[str]:
    """The ids that occur more than once in ``store``, found through their hashes (``[N] uint64``) in memory
    bounded by the hashes; hash collisions of different ids are told apart by reading the ids back."""
    ordered = np.sort(hashes)
    suspects = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
    if not suspects:
        return []
    seen, duplicates = set(), []
    for row in np.flatnonzero(np.isin(hashes, np.array(sorted(suspects), dtype=np.uint64))):
        passage_id = store[int(row)].id
        if passage_id in seen:
            duplicates.append(passage_id)
        seen.add(passage_id)
    return duplicates


def duplicate_ids_message(path, duplicates: list[str]) -> str:
    shown = ", ".join(repr(d) for d in duplicates[:5])
    return f"corpus {path} has {len(duplicates)} duplicate passage id(s), e.g. {shown}: ids must be unique"


class PassageStore:
    """The passages of an index: ``passages.jsonl`` read through a memory map, located by ``passage_offsets.npy``.

    ``close()`` (or leaving a ``with`` block) releases the memory maps; reading a closed store raises ValueError."""

    FILE, OFFSETS = "passages.jsonl", "passage_offsets.npy"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._offsets = np.load(self.folder / self.OFFSETS, mmap_mode="r", allow_pickle=False)  # [N + 1] byte offsets
        with open(self.folder / self.FILE, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def close(self) -> None:
        """Release the memory maps (the offsets' when no view of them is left); closing twice does nothing."""
        if self._map is not None:
            self._map.close()
        self._map = self._offsets = None

    def __enter__(self) -> "PassageStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self) -> tuple[np.ndarray, mmap.mmap]:
        if self._map is None:
            raise ValueError(f"the passage store in {self.folder} is closed: open it (or its index) again to read it")
        return self._offsets, self._map

    @staticmethod
    def write(folder: str | Path, passages: Iterable[Passage], block: int = 65_536) -> np.ndarray:
        """Write ``passages`` (any iterable: they are streamed) into ``folder``; return a 64-bit hash of each id,
        ``[N] uint64``, for :func:`duplicate_ids`. Memory: 16 bytes per passage (offsets and hashes)."""
        folder = Path(folder)
        offsets, hashes = [np.zeros(1, dtype=np.int64)], []
        position, pending, pending_hashes = 0, [], []
        with open(folder / PassageStore.FILE, "wb") as f:
            for passage in passages:
                line = json.dumps({"id": passage.id, "title": passage.title, "text": passage.text}, ensure_ascii=False)
                position += f.write(line.encode("utf-8") + b"\n")
                pending.append(position)
                pending_hashes.append(id_hash(passage.id))
                if len(pending) == block:
                    offsets.append(np.array(pending, dtype=np.int64))
                    hashes.append(np.array(pending_hashes, dtype=np.uint64))
                    pending, pending_hashes = [], []
        offsets.append(np.array(pending, dtype=np.int64))
        hashes.append(np.array(pending_hashes, dtype=np.uint64))
        np.save(folder / PassageStore.OFFSETS, np.concatenate(offsets), allow_pickle=False)
        return np.concatenate(hashes)

    def texts(self, start: int, stop: int) -> list[str]:
        """``title\ntext`` (or the text alone) of rows ``start`` to ``stop``: what the indexes tokenize and embed."""
        return [titled_text(p.title, p.text) for p in map(self.get, range(start, stop))]  # what an index sees of a passage

    def __len__(self) -> int:
        offsets, _ = self._open()
        return len(offsets) - 1

    def get(self, row: int, score: float | None = None) -> Passage:
        offsets, lines = self._open()
        record = json.loads(lines[offsets[row]: offsets[row + 1]])
        return Passage(title=record["title"], text=record["text"], id=record["id"], score=score)

    def __getitem__(self, row: int) -> Passage:
        if not 0 <= row < len(self):
            raise IndexError(row)
        return self.get(row)
