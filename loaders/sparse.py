"""BM25 keyword vectors for the store's hybrid search: Qdrant sparse vectors whose IDF Qdrant applies
itself (`Modifier.IDF`), embedded and on a server alike.

Written here because the usual provider, fastembed's `Qdrant/bm25`, fetches its files from a hub at first
use, which fails offline. The weights are fastembed's: a term's saturated frequency
tf·(k1+1) / (tf + k1·(1 − b + b·len/avg_len)) in a document, 1 per term in a query; the term's index is
its CRC-32, stable across processes and machines.
"""
from __future__ import annotations

import zlib
from collections import Counter

from langchain_qdrant import SparseEmbeddings, SparseVector

from loaders.terms import terms

K1, B, AVG_LEN = 1.2, 0.75, 256.0  # fastembed's Bm25 defaults


def term_index(term: str) -> int:
    return zlib.crc32(term.encode("utf-8")) & 0x7FFFFFFF


class BM25Sparse(SparseEmbeddings):
    def embed_documents(self, texts: list[str]) -> list[SparseVector]:
        return [self._document(text) for text in texts]

    def embed_query(self, text: str) -> SparseVector:
        indices = sorted({term_index(t) for t in terms(text)})
        return SparseVector(indices=indices, values=[1.0] * len(indices))

    @staticmethod
    def _document(text: str) -> SparseVector:
        counts = Counter(terms(text))
        length = sum(counts.values())
        weights: dict[int, float] = {}
        for term, tf in counts.items():
            index = term_index(term)  # two terms on one index (rare) add up, as fastembed's do
            weights[index] = weights.get(index, 0.0) + tf * (K1 + 1) / (tf + K1 * (1 - B + B * length / AVG_LEN))
        indices = sorted(weights)
        return SparseVector(indices=indices, values=[weights[i] for i in indices])
