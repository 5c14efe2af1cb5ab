"""The server engine: langchain_qdrant's QdrantVectorStore over qdrant-client, for a Qdrant server or
cluster (CHATAPP_QDRANT_URL), with the engine operations the embedded engine (loaders/edge.py) has.

The same layout (loaders/layout.py) and the same hybrid query: dense and BM25 prefetches, each filtered
to complete chunks, fused by RRF with the same constant, ties broken the same way. qdrant-client's local
mode (`QdrantClient(path=...)`) runs this same code: the tests use it as the server's stand-in, and the
migration reads stores that earlier versions wrote with it.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterator

from langchain_core.documents import Document
from langchain_qdrant import QdrantVectorStore, RetrievalMode
from qdrant_client import QdrantClient, models

from loaders.layout import (CONTENT, DENSE, INDEXED_FIELDS, KEYWORDS, PENDING, PREFETCH, RRF_K, WRITING, Hit, StoredPoint,
                            ranked)
from loaders.sparse import BM25Sparse

SCHEMA = {"keyword": models.PayloadSchemaType.KEYWORD, "integer": models.PayloadSchemaType.INTEGER}


def _match(key: str, value) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


VISIBLE = models.Filter(must_not=[_match(PENDING, WRITING)])


def _where(source: str | None, pending: bool | None) -> models.Filter | None:
    must = [_match("metadata.source", source)] if source is not None else []
    if pending is True:
        must.append(_match(PENDING, WRITING))
    must_not = [_match(PENDING, WRITING)] if pending is False else []
    return models.Filter(must=must, must_not=must_not) if must or must_not else None


def _dense(vector) -> list[float]:
    return list((vector.get(DENSE, []) if isinstance(vector, dict) else vector) or [])


def create_collection(client: QdrantClient, collection: str, dimension: int) -> None:
    """The layout: unnamed dense vector (DOT), `bm25` sparse with IDF, keyword/integer payload indexes."""
    client.create_collection(collection, vectors_config=models.VectorParams(size=dimension, distance=models.Distance.DOT),
                             sparse_vectors_config={KEYWORDS: models.SparseVectorParams(modifier=models.Modifier.IDF)})
    with warnings.catch_warnings():  # local mode says payload indexes do nothing there; a server uses them
        warnings.simplefilter("ignore")
        for name, kind in INDEXED_FIELDS.items():
            client.create_payload_index(collection, name, SCHEMA[kind])


class ServerVectorStore(QdrantVectorStore):
    def __init__(self, client: QdrantClient, collection: str, embedding, sparse_embedding: BM25Sparse | None = None):
        keywords = sparse_embedding or BM25Sparse()
        if not client.collection_exists(collection):
            create_collection(client, collection, len(embedding.embed_query("dimension probe")))
        super().__init__(client=client, collection_name=collection, embedding=embedding,
                         distance=models.Distance.DOT, sparse_embedding=keywords, sparse_vector_name=KEYWORDS,
                         retrieval_mode=RetrievalMode.HYBRID)
        self.keywords = keywords

    # LangChain's searches go through the hybrid query below, so a retriever sees what the chat sees.
    def similarity_search_with_score(self, query: str, k: int = 4, hybrid: bool = True,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        dense = self.embeddings.embed_query(query)
        hits = self.query(dense, self.keywords.embed_query(query) if hybrid else None, k)
        return [(hit.document(), float(sum(a * b for a, b in zip(dense, hit.dense)))) for hit in hits]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, **kwargs)]

    # -- the engine operations (the embedded engine has the same) ---------------------------------------
    def write(self, points: list[StoredPoint]) -> None:
        missing = [p for p in points if p.sparse is None]
        for point, vector in zip(missing, self.keywords.embed_documents(
                [p.payload.get("page_content") or "" for p in missing])):
            point.sparse = (vector.indices, vector.values)
        self.client.upsert(self.collection_name, points=[models.PointStruct(
            id=p.id, payload=p.payload, vector={DENSE: list(p.dense), KEYWORDS: models.SparseVector(
                indices=list(p.sparse[0]), values=list(p.sparse[1]))}) for p in points])

    def existing(self, ids: list[str]) -> dict[str, dict]:
        records = self.client.retrieve(self.collection_name, ids, with_payload=[PENDING, CONTENT], with_vectors=False)
        return {str(r.id): r.payload or {} for r in records}

    def finish(self, source: str) -> None:
        self.client.delete_payload(self.collection_name, keys=[PENDING], points=models.FilterSelector(
            filter=_where(source, True)))

    def remove(self, source: str, keep_sha: str | None = None, keep_below: int | None = None) -> None:
        where = _where(source, None)
        if keep_sha is not None:
            where = models.Filter(must=where.must, must_not=[models.Filter(must=[
                _match("metadata.sha256", keep_sha),
                models.FieldCondition(key="metadata.chunk", range=models.Range(lt=keep_below))])])
        self.client.delete(self.collection_name, points_selector=models.FilterSelector(filter=where))

    def count(self, source: str | None = None, pending: bool | None = False) -> int:
        return self.client.count(self.collection_name, count_filter=_where(source, pending), exact=True).count

    def scroll(self, fields: list[str] | None = None, pending: bool | None = False, limit: int = 1024,
               vectors: bool = False, source: str | None = None) -> Iterator[StoredPoint]:
        selector = models.PayloadSelectorInclude(include=fields) if fields else True
        offset = None
        while True:
            records, offset = self.client.scroll(self.collection_name, scroll_filter=_where(source, pending),
                                                 limit=limit, offset=offset, with_payload=selector,
                                                 with_vectors=vectors)
            for r in records:
                vector = r.vector if isinstance(r.vector, dict) else {DENSE: r.vector or []}
                sparse = vector.get(KEYWORDS)
                yield StoredPoint(str(r.id), list(vector.get(DENSE) or []), r.payload or {},
                                  (list(sparse.indices), list(sparse.values)) if sparse is not None else None)
            if offset is None:
                return

    def query(self, dense: list[float], sparse=None, k: int = 4) -> list[Hit]:
        if sparse is None:
            request = dict(query=dense, using=DENSE, limit=k)
        else:
            depth = max(k, PREFETCH)
            request = dict(prefetch=[
                models.Prefetch(query=dense, using=DENSE, limit=depth, filter=VISIBLE),
                models.Prefetch(query=models.SparseVector(indices=list(sparse.indices), values=list(sparse.values)),
                                using=KEYWORDS, limit=depth, filter=VISIBLE)],
                query=models.RrfQuery(rrf=models.Rrf(k=RRF_K)), limit=2 * depth)
        if sparse is None:
            points = self.client.query_points(self.collection_name, query_filter=VISIBLE, with_payload=True,
                                              with_vectors=[DENSE], **request).points
            return [Hit(str(p.id), p.payload or {}, float(p.score), _dense(p.vector)) for p in points]
        points = self.client.query_points(self.collection_name, query_filter=VISIBLE, with_payload=False,
                                          with_vectors=False, **request).points
        # Payloads and vectors are read for the k kept, not for all 80 fused candidates.
        top = ranked([Hit(str(p.id), {}, float(p.score)) for p in points], k)
        records = {str(r.id): r for r in self.client.retrieve(self.collection_name, [h.id for h in top],
                                                              with_payload=True, with_vectors=[DENSE])}
        return [Hit(h.id, records[h.id].payload or {}, h.score, _dense(records[h.id].vector))
                for h in top if h.id in records]

    def holds_keyword(self, sparse) -> bool:
        """Whether a complete point's BM25 vector holds one of the terms of `sparse` (a query vector)."""
        return bool(self.client.query_points(
            self.collection_name, query=models.SparseVector(indices=list(sparse.indices), values=list(sparse.values)),
            using=KEYWORDS, limit=1, query_filter=VISIBLE, with_payload=False, with_vectors=False).points)

    def index_in_background(self, threshold: int = 0) -> None:
        return None  # a server indexes by itself

    def close(self) -> None:
        self.client.close()
