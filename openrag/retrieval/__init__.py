"""Retrieval over the user's own documents: a corpus read into passages, indexed for BM25, dense or hybrid search.

    from openrag.retrieval import build_index, open_index, IndexSettings
    index = build_index("docs/", "docs.index", IndexSettings(kind="hybrid"))
    index = open_index("docs.index")
    index.search(["who wrote it?"], top_k=5)   # [[Passage(title, text, id, score), ...]] (openrag.passage)
"""

from openrag.retrieval.corpus import Corpus, PassageStore, corpus_checksum, iter_passages, read_corpus, split_words
from openrag.retrieval.hybrid import reciprocal_rank_fusion
from openrag.retrieval.index import (
    KINDS,
    Index,
    IndexSettings,
    SearchSettings,
    build_index,
    existing_index_matches,
    merge_index,
    open_index,
    update_search_settings,
)
from openrag.retrieval.bm25 import BM25Settings
from openrag.retrieval.dense import DenseSettings
from openrag.retrieval.metrics import retrieval_recall_at_k
from openrag.retrieval.passage import Retriever

__all__ = [
    "BM25Settings", "Corpus", "DenseSettings", "Index", "IndexSettings", "KINDS", "PassageStore",
    "Retriever", "SearchSettings", "build_index", "corpus_checksum", "existing_index_matches", "iter_passages",
    "merge_index", "open_index", "read_corpus", "reciprocal_rank_fusion", "retrieval_recall_at_k", "split_words",
    "update_search_settings",
]
