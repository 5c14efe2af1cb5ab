"""The collection layout both store engines share (Qdrant Edge embedded, qdrant-client for a server):
names, the point as written, and the hybrid query's constants. One home, so the two engines cannot drift.

A point is {"page_content": text, "metadata": {...}} as langchain_qdrant writes it, an unnamed dense
vector (DOT on unit vectors = cosine) and the `bm25` sparse vector (IDF applied by Qdrant), plus
`pending: "writing"` while the ingest writing its source has not finished: such points are invisible to
search, listing and counting until the flag is removed (loaders/store.py). A keyword, not a bool: Qdrant
Edge 0.9 does not match a bool payload value (MatchValue(True) counts 0), a keyword matches in both engines.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from langchain_core.documents import Document

DENSE = ""  # the unnamed vector, as langchain_qdrant names it
KEYWORDS = "bm25"  # the sparse BM25 vector of each chunk (loaders/sparse.py)
CONTENT, METADATA = "page_content", "metadata"  # langchain_qdrant's payload keys
PENDING, WRITING = "pending", "writing"  # top-level payload flag of chunks whose source is still being written
PREFETCH = 40  # candidates each of dense and BM25 search hands the fusion
RRF_K = 2  # reciprocal rank fusion's constant: Qdrant's default, named so both engines pass the same one
INDEXED_FIELDS = {"metadata.source": "keyword", "metadata.sha256": "keyword", "metadata.chunk": "integer",
                  PENDING: "keyword"}


@dataclass
class StoredPoint:
    """One chunk as stored: what migration and push copy between engines, and what bulk writes take."""
    id: str
    dense: list[float]
    payload: dict
    sparse: tuple[list[int], list[float]] | None = None  # (indices, values); None: computed by the writer

    @property
    def source(self) -> str:
        return (self.payload.get(METADATA) or {}).get("source", "")


@dataclass
class Hit:
    """A search result: the point, its fused (or dense) score and its dense vector (for the cosine)."""
    id: str
    payload: dict
    score: float
    dense: list[float] = field(default_factory=list)

    def document(self) -> Document:
        return Document(page_content=self.payload.get(CONTENT) or "", metadata=self.payload.get(METADATA) or {},
                        id=self.id)


def payload(text: str, metadata: dict, pending: bool = False) -> dict:
    body = {CONTENT: text, METADATA: metadata}
    if pending:
        body[PENDING] = WRITING
    return body


def ranked(hits: list[Hit], k: int) -> list[Hit]:
    """The k best, ties on the fused score broken by the id: RRF gives equal scores to equal ranks, and the
    two engines order such ties differently, so without this the same data could give another top-k."""
    return sorted(hits, key=lambda h: (-round(h.score, 9), h.id))[:k]
