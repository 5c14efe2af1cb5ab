"""The embedded engine: Qdrant Edge (`qdrant-edge-py`), Qdrant's own engine in-process, as a small
LangChain VectorStore over one EdgeShard in DATA/store/COLLECTION.

Same layout as the server path (loaders/layout.py) and the same hybrid query: dense and BM25 prefetches
fused by RRF with the same constant, over our own BM25 sparse vectors (Edge's built-in Bm25 tokenises
differently from what a server is given, so the two would rank differently).

The HNSW index is built in a child process on a copy of the shard, then swapped in: EdgeShard.optimize()
holds the GIL for its whole run (minutes at 1M points), which would freeze every thread of the app.
Searches answer meanwhile from the live shard (exact search over the unindexed points: correct, slower).

Run as `python -m loaders.edge optimize PATH` by that build; not a user command.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator

import qdrant_edge as edge
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from loaders.layout import (CONTENT, DENSE, INDEXED_FIELDS, KEYWORDS, PENDING, PREFETCH, RRF_K, WRITING, Hit, StoredPoint,
                            payload, ranked)
from loaders.sparse import BM25Sparse

log = logging.getLogger("loaders.edge")

INDEX_AFTER = 20_000  # unindexed points that start a background HNSW build (below it exact search is ~ms)
HNSW = dict(m=16, ef_construct=64, full_scan_threshold=10_000)  # ef_construct 64: builds ~1.5x faster than 100
# Payload indexes memory-mapped (Cold), not read in at open: at 200k points open went 0.77 -> 0.26 s.
SCHEMA = {"keyword": edge.KeywordIndexParams(memory=edge.Memory.Cold),
          "integer": edge.IntegerIndexParams(lookup=True, range=True, memory=edge.Memory.Cold)}
# int8 copies of the dense vectors, built with the index, walk the HNSW graph instead of the float vectors
# on disk; the best candidates are rescored on the originals. Measured at 200k random points (bench/store.py
# arms): dense p95 16.5 -> 2.1 ms, index build 296 -> 132 s; hnsw_ef 128 kept recall@1 at 1.0 (64: 0.94).
# Cold: paged in as searches touch them (Pinned reads them in at open: +2 s at 200k).
QUANTIZATION = edge.ScalarQuantizationConfig(edge.ScalarType.Int8, quantile=0.99, memory=edge.Memory.Cold)
SEARCH = edge.SearchParams(hnsw_ef=128, quantization=edge.QuantizationSearchParams(rescore=True, oversampling=2.0))


class Closing(Exception):
    """The store is being closed: an index build in progress stops."""


class StoreInUse(Exception):
    """Another process has the shard open (Edge locks its WAL)."""


def config(dimension: int) -> edge.EdgeConfig:
    return edge.EdgeConfig(
        # Vectors and sparse vectors are memory-mapped and payloads stay on disk, none read in at open: a
        # 1M-chunk store opens without reading its gigabytes, and the OS page cache keeps what searches touch.
        vectors={DENSE: edge.EdgeVectorParams(dimension, edge.Distance.Dot, on_disk=True)},
        sparse_vectors={KEYWORDS: edge.EdgeSparseVectorParams(modifier=edge.Modifier.Idf, on_disk=True)},
        on_disk_payload=True,
        hnsw_config=edge.HnswIndexConfig(**HNSW),
        quantization_config=QUANTIZATION)


def _open_shard(path: Path, dimension: int | None) -> edge.EdgeShard:
    try:
        if (path / "edge_config.json").exists():
            return edge.EdgeShard.load(str(path))
        if dimension is None:
            raise FileNotFoundError(f"no store at {path}")
        path.mkdir(parents=True, exist_ok=True)
        shard = edge.EdgeShard.create(str(path), config(dimension))
        for name, kind in INDEXED_FIELDS.items():
            shard.update(edge.UpdateOperation.create_field_index(name, SCHEMA[kind]))
        return shard
    except Exception as err:
        if "WouldBlock" in str(err):
            raise StoreInUse(str(path)) from None
        raise


def _match(key: str, value) -> edge.FieldCondition:
    return edge.FieldCondition(key, match=edge.MatchValue(value))


VISIBLE = edge.Filter(must_not=[_match(PENDING, WRITING)])


def _where(source: str | None, pending: bool | None) -> edge.Filter | None:
    """Points of `source` (all when None); pending=False: complete ones only, True: pending only."""
    must = [_match("metadata.source", source)] if source is not None else []
    if pending is True:
        must.append(_match(PENDING, WRITING))
    must_not = [_match(PENDING, WRITING)] if pending is False else []
    return edge.Filter(must=must, must_not=must_not) if must or must_not else None


class EdgeVectorStore(VectorStore):
    def __init__(self, path: str | Path, embedding: Embeddings, sparse_embedding: BM25Sparse | None = None,
                 dimension: int | None = None):
        self.path = Path(path)
        self._embedding, self.keywords = embedding, sparse_embedding or BM25Sparse()
        if dimension is None and not (self.path / "edge_config.json").exists():
            dimension = len(embedding.embed_query("dimension probe"))
        self.shard = _open_shard(self.path, dimension)
        self.lock = threading.RLock()  # one call into the shard at a time; each holds the GIL anyway
        self.generation = 0  # bumped by every write: an index build made from an older copy is thrown away
        self._build: threading.Thread | None = None
        self._child: subprocess.Popen | None = None  # the running index build, stopped by close()
        self._closing = False
        self._state = self.path.with_name(self.path.name + ".index.json")  # beside the shard, not in Edge's folder

    # -- LangChain's VectorStore face -------------------------------------------------------------------
    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *, ids: list[str] | None = None,
                  **kwargs: Any) -> list[str]:
        texts = list(texts)
        metadatas = metadatas or [{} for _ in texts]
        ids = [str(i) for i in ids] if ids else [str(uuid.uuid4()) for _ in texts]
        dense = self._embedding.embed_documents(texts)
        self.write([StoredPoint(i, v, payload(t, m)) for i, v, t, m in zip(ids, dense, texts, metadatas)])
        return ids

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, hybrid: bool = True,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        """Hybrid (dense + BM25 by RRF) unless hybrid=False; the score is the cosine either way."""
        dense = self._embedding.embed_query(query)
        hits = self.query(dense, self.keywords.embed_query(query) if hybrid else None, k)
        return [(hit.document(), _cosine(dense, hit.dense)) for hit in hits]

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        if ids:
            with self.lock:
                self.shard.update(edge.UpdateOperation.delete_points([str(i) for i in ids]))
                self.generation += 1
        return True

    def get_by_ids(self, ids, /) -> list[Document]:
        with self.lock:
            records = self.shard.retrieve([str(i) for i in ids], True, False)
        return [Hit(str(r.id), r.payload or {}, 0.0).document() for r in records]

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *,
                   ids: list[str] | None = None, path: str | Path = "edge-store", **kwargs: Any) -> "EdgeVectorStore":
        store = cls(path, embedding)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    # -- the engine operations the document store uses (the server engine has the same) ----------------
    def write(self, points: list[StoredPoint]) -> None:
        """Upsert points; their BM25 vectors are computed here when not given."""
        missing = [p for p in points if p.sparse is None]
        for point, vector in zip(missing, self.keywords.embed_documents(
                [p.payload.get("page_content") or "" for p in missing])):
            point.sparse = (vector.indices, vector.values)
        # uuid.UUID ids convert faster than strings; dense lists pass as they are (the bulk-insert rate)
        batch = [edge.Point(uuid.UUID(p.id), {DENSE: p.dense, KEYWORDS: edge.SparseVector(*p.sparse)}, p.payload)
                 for p in points]
        with self.lock:
            self.shard.update(edge.UpdateOperation.upsert_points(batch))
            self.generation += 1

    def existing(self, ids: list[str]) -> dict[str, dict]:
        """Which of these ids are stored: id -> its pending flag and text."""
        with self.lock:
            records = self.shard.retrieve(ids, edge.PayloadSelector.Include([PENDING, CONTENT]), False)
        return {str(r.id): r.payload or {} for r in records}

    def finish(self, source: str) -> None:
        """The source's pending chunks become visible, in one update."""
        with self.lock:
            self.shard.update(edge.UpdateOperation.delete_payload_by_filter(_where(source, True), [PENDING]))
            self.generation += 1

    def remove(self, source: str, keep_sha: str | None = None, keep_below: int | None = None) -> None:
        """Delete the source's points, except (when keep_sha is given) chunks 0..keep_below-1 of that version."""
        where = _where(source, None)
        if keep_sha is not None:
            where = edge.Filter(must=where.must, must_not=[edge.Filter(must=[
                _match("metadata.sha256", keep_sha),
                edge.FieldCondition("metadata.chunk", range=edge.RangeFloat(lt=keep_below))])])
        with self.lock:
            self.shard.update(edge.UpdateOperation.delete_points_by_filter(where))
            self.generation += 1

    def count(self, source: str | None = None, pending: bool | None = False) -> int:
        with self.lock:
            return self.shard.count(edge.CountRequest(exact=True, filter=_where(source, pending)))

    def scroll(self, fields: list[str] | None = None, pending: bool | None = False, limit: int = 1024,
               vectors: bool = False, source: str | None = None) -> Iterator[StoredPoint]:
        """Every point (complete ones by default), in id order, pages read under the lock; `fields`: the
        payload keys to read (None: all)."""
        selector = edge.PayloadSelector.Include(fields) if fields else True
        offset = None
        while True:
            with self.lock:
                records, offset = self.shard.scroll(edge.ScrollRequest(
                    offset=offset, limit=limit, filter=_where(source, pending), with_payload=selector,
                    with_vector=vectors))
            for r in records:
                vector = r.vector or {}
                sparse = vector.get(KEYWORDS)
                yield StoredPoint(str(r.id), list(vector.get(DENSE) or []), r.payload or {},
                                  (list(sparse.indices), list(sparse.values)) if sparse is not None else None)
            if offset is None:
                return

    def query(self, dense: list[float], sparse=None, k: int = 4) -> list[Hit]:
        """Complete points only. With `sparse` (a BM25 query vector): dense and BM25 fused by RRF."""
        if sparse is None:
            request = edge.QueryRequest(limit=k, query=edge.Query.Nearest(list(dense), using=DENSE), filter=VISIBLE,
                                        params=SEARCH, with_payload=True, with_vector=[DENSE])
        else:
            depth = max(k, PREFETCH)
            request = edge.QueryRequest(
                limit=2 * depth,  # all fused candidates: ties are cut by `ranked`, the same way in both engines
                prefetches=[edge.Prefetch(depth, query=edge.Query.Nearest(list(dense), using=DENSE), filter=VISIBLE,
                                          params=SEARCH),
                            edge.Prefetch(depth, query=edge.Query.Nearest(
                                edge.SparseVector(list(sparse.indices), list(sparse.values)), using=KEYWORDS),
                                filter=VISIBLE)],
                query=edge.Fusion.Rrf(RRF_K), filter=VISIBLE, with_payload=False, with_vector=False)
        with self.lock:
            points = self.shard.query(request)
            if sparse is None:
                return [Hit(str(p.id), p.payload or {}, float(p.score), _dense(p.vector)) for p in points]
            # Payloads (on disk) and vectors are read for the k kept, not for all 80 fused candidates.
            top = ranked([Hit(str(p.id), {}, float(p.score)) for p in points], k)
            records = {str(r.id): r for r in self.shard.retrieve([uuid.UUID(h.id) for h in top], True, [DENSE])}
        return [Hit(h.id, records[h.id].payload or {}, h.score, _dense(records[h.id].vector))
                for h in top if h.id in records]

    def holds_keyword(self, sparse) -> bool:
        """Whether a complete point's BM25 vector holds one of the terms of `sparse` (a query vector)."""
        request = edge.QueryRequest(limit=1, query=edge.Query.Nearest(
            edge.SparseVector(list(sparse.indices), list(sparse.values)), using=KEYWORDS), filter=VISIBLE,
            with_payload=False, with_vector=False)
        with self.lock:
            return bool(self.shard.query(request))

    # -- the index ---------------------------------------------------------------------------------------
    def unindexed(self) -> int:
        """Points written since the last index build (deleted ones included: an estimate)."""
        indexed = json.loads(self._state.read_text()).get("points", 0) if self._state.exists() else 0
        with self.lock:
            total = self.shard.count(edge.CountRequest(exact=True))
        return max(0, total - indexed)

    def index_in_background(self, threshold: int = INDEX_AFTER) -> threading.Thread | None:
        """Start an index build in a thread (its work runs in a child process) when enough points are unindexed."""
        if (self._build and self._build.is_alive()) or self.unindexed() < threshold:
            return None
        self._build = threading.Thread(target=self.build_index, name="edge-index", daemon=True)
        self._build.start()
        return self._build

    def build_index(self) -> bool:
        """Build the HNSW index on a copy in a child process and swap it in. False when a write came in
        meanwhile (the copy is stale; the next build starts from the newer data)."""
        with self.lock:
            self.shard.flush()
            generation = self.generation
            with_points = self.shard.count(edge.CountRequest(exact=True))
        copy = self.path.with_name(self.path.name + ".indexing")
        shutil.rmtree(copy, ignore_errors=True)
        try:
            # Copied without the lock: searches never change the files, and a write during the copy is
            # caught by the generation check below.
            try:
                shutil.copytree(self.path, copy, ignore=shutil.ignore_patterns("*.lock"), copy_function=self._copy_file)
            except Closing:
                return False
            if self.generation != generation or self._closing:
                return False
            self._child = subprocess.Popen([sys.executable, "-m", "loaders.edge", "optimize", str(copy)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            _, errors = self._child.communicate()
            if self._child.returncode != 0:
                if self._child.returncode < 0:  # stopped by close()
                    return False
                raise RuntimeError(f"index build failed: {' '.join(errors.split())[-300:]}")
            with self.lock:
                if self.generation != generation:
                    return False
                old = self.path.with_name(self.path.name + ".previous")
                shutil.rmtree(old, ignore_errors=True)
                self.shard.close()
                self.path.rename(old)
                copy.rename(self.path)
                try:
                    self.shard = edge.EdgeShard.load(str(self.path))
                except Exception:  # the built copy does not open: back to the shard as it was
                    self.path.rename(copy)
                    old.rename(self.path)
                    self.shard = edge.EdgeShard.load(str(self.path))
                    raise
                shutil.rmtree(old, ignore_errors=True)
                self._state.write_text(json.dumps({"points": with_points}))
            log.info("index built on %d points of %s", with_points, self.path)
            return True
        finally:
            shutil.rmtree(copy, ignore_errors=True)

    def _copy_file(self, source: str, target: str) -> None:
        if self._closing:  # close() stops a build at the next file, not after copying gigabytes
            raise Closing()  # not an OSError, which copytree would collect and copy on
        shutil.copy2(source, target)

    def wait_for_index(self, timeout: float | None = None) -> None:
        if self._build is not None:
            self._build.join(timeout)

    def close(self) -> None:
        self._closing = True
        if self._child is not None and self._child.poll() is None:
            self._child.terminate()  # a build can take minutes at 1M points; the next open starts it again
        self.wait_for_index()  # a swap half done would leave the folder renamed
        with self.lock:
            self.shard.close()


def _dense(vector) -> list[float]:
    return list((vector.get(DENSE) if isinstance(vector, dict) else vector) or [])  # Edge 0.9 unwraps one name


def _cosine(a: list[float], b: list[float]) -> float:
    return float(sum(x * y for x, y in zip(a, b)))  # unit vectors: the dot product is the cosine


def optimize(path: str) -> None:
    shard = edge.EdgeShard.load(path)
    shard.optimize()
    shard.flush()
    shard.close()


if __name__ == "__main__":
    if sys.argv[1:2] != ["optimize"] or len(sys.argv) != 3:
        sys.exit("usage: python -m loaders.edge optimize PATH  (run by the store's index build)")
    optimize(sys.argv[2])
