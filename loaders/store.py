"""The document store: a langchain_qdrant.QdrantVectorStore over embedded Qdrant (on disk under the data
folder) or a Qdrant server/cluster (CHATAPP_QDRANT_URL). Both go through the same QdrantClient calls.

    store = get_store(settings)          # one per process: embedded Qdrant locks its folder
    store.ingest(["paper.pdf", "https://youtu.be/..."], progress=lambda f, msg: ...)
    store.search("what is attention?", k=4)   # [(Document, cosine similarity), ...]

A source is stored under its key (file name or URL). Chunk ids are uuid5(source, sha256, chunk index):
re-ingesting unchanged bytes adds nothing, changed bytes replace the old chunks, and a failed source
leaves nothing behind (new chunks are written before old ones are removed, and removed again on error).
"""
from __future__ import annotations

import hashlib
import logging
import re
import shutil
import threading
import uuid
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from langchain_core.documents import Document

from loaders.documents import LoadError, expand, is_url, load, source_key, split
from loaders.sparse import BM25Sparse

log = logging.getLogger("loaders.store")

Progress = Callable[[float, str], None]
CHUNK_NAMESPACE = uuid.UUID("6f0c6a52-3c47-4d1e-9a55-2f6a0c1f7a10")  # fixed: ids must not change between runs
WRITE_BATCH = 256  # chunks embedded and written per step: bounds memory and paces the progress bar
KEYWORDS = "bm25"  # the sparse vector of each chunk, for hybrid search
PREFETCH = 40  # candidates each of dense and BM25 search hands the fusion


@dataclass
class IngestResult:
    source: str
    ok: bool
    chunks: int = 0   # chunks the source has in the store after ingesting
    added: int = 0    # chunks written by this run (0 when unchanged)
    error: str | None = None  # one-line reason when ok is False

    def summary(self) -> str:
        if not self.ok:
            return f"FAILED {self.source}: {self.error}"
        if self.added == 0:
            return f"ok     {self.source}: unchanged, {self.chunks} chunks"
        return f"ok     {self.source}: {self.chunks} chunks"

    def as_dict(self) -> dict:
        return asdict(self)


class StoreError(Exception):
    """The store cannot be opened (folder in use, server unreachable). str() is one line."""


def chunk_id(source: str, sha256: str, index: int) -> str:
    return str(uuid.uuid5(CHUNK_NAMESPACE, f"{source}\n{sha256}\n{index}"))


class DocumentStore:
    def __init__(self, client, collection: str, embeddings, *, chunk_size: int = 1000, chunk_overlap: int = 150,
                 files_dir: Path | None = None, hybrid: bool = True, progress: Progress | None = None):
        from langchain_qdrant import QdrantVectorStore, RetrievalMode
        from qdrant_client import models

        self.client, self.collection, self.embeddings = client, collection, embeddings
        self.keywords = BM25Sparse()
        self.hybrid = hybrid  # search by dense and BM25 vectors fused by reciprocal rank; False: dense only
        self.chunk_size, self.chunk_overlap = chunk_size, chunk_overlap
        # A copy of each stored PDF, by its sha256: the chat draws the cited page from it.
        self.files_dir = Path(files_dir) if files_dir else None
        self._lock = threading.RLock()  # Gradio handlers run in threads; embedded Qdrant is not thread-safe
        self._pending: Counter[str] = Counter()  # sources an ingest in this process is storing now
        self._pending_changed = threading.Condition()
        if not client.collection_exists(collection):
            dimension = len(embeddings.embed_query("dimension probe"))
            # DOT on unit vectors is the cosine similarity (what Qdrant's COSINE does after normalising on
            # upsert); qdrant-client's local mode re-normalises every stored vector on each COSINE query,
            # which costs ~100 ms at 50k chunks, while DOT is one matrix product.
            client.create_collection(collection, vectors_config=models.VectorParams(
                size=dimension, distance=models.Distance.DOT), sparse_vectors_config={
                KEYWORDS: models.SparseVectorParams(modifier=models.Modifier.IDF)})
            with warnings.catch_warnings():  # local mode says payload indexes do nothing there; a server uses them
                warnings.simplefilter("ignore")
                for field in ("metadata.source", "metadata.sha256"):
                    client.create_payload_index(collection, field, models.PayloadSchemaType.KEYWORD)
            _tune_local(client)  # the new collection has its own SQLite file and vector matrix
        params = client.get_collection(collection).config.params
        if KEYWORDS not in (params.sparse_vectors or {}) or not self._all_have_keywords():
            self._add_keywords(progress)
        self.vector_store = QdrantVectorStore(
            client=client, collection_name=collection, embedding=embeddings, distance=params.vectors.distance,
            sparse_embedding=self.keywords, sparse_vector_name=KEYWORDS, retrieval_mode=RetrievalMode.HYBRID)

    def _all_have_keywords(self) -> bool:
        points, _ = self.client.scroll(self.collection, scroll_filter=self._missing_keywords(), limit=1,
                                       with_payload=False, with_vectors=False)
        return not points

    def _missing_keywords(self):
        from qdrant_client import models

        return models.Filter(must_not=[models.HasVectorCondition(has_vector=KEYWORDS)])

    def _add_keywords(self, progress: Progress | None) -> None:
        """Migrate a store made before hybrid search: add the BM25 vector and fill it in for every chunk that
        lacks it. Ids, dense vectors and payloads stay as they are; a migration cut short goes on at the next
        open, from the chunks still without one."""
        from qdrant_client import models

        if KEYWORDS not in (self.client.get_collection(self.collection).config.params.sparse_vectors or {}):
            self.client.create_vector_name(self.collection, KEYWORDS, models.SparseVectorNameConfig(
                sparse=models.SparseVectorConfig(modifier=models.Modifier.IDF)))
        lacking = self._missing_keywords()
        total = self.client.count(self.collection, count_filter=lacking, exact=True).count
        if not total:
            return
        log.warning("adding keyword (BM25) vectors to %d chunks of %s, for hybrid search", total, self.collection)
        done = 0
        while True:  # each pass takes the next chunks still lacking the vector
            points, _ = self.client.scroll(self.collection, scroll_filter=lacking, limit=WRITE_BATCH,
                                           with_payload=["page_content"], with_vectors=False)
            if not points:
                break
            vectors = self.keywords.embed_documents([(p.payload or {}).get("page_content") or "" for p in points])
            self.client.update_vectors(self.collection, points=[
                models.PointVectors(id=p.id, vector={KEYWORDS: models.SparseVector(indices=v.indices, values=v.values)})
                for p, v in zip(points, vectors)])
            done += len(points)
            if progress:
                progress(done / total, f"adding keyword vectors: {done}/{total} chunks")

    @classmethod
    def from_settings(cls, settings) -> "DocumentStore":
        from loaders.embeddings import SentenceEmbeddings

        client = open_client(settings)
        try:
            embeddings = SentenceEmbeddings(settings.embedding_model, backend=getattr(settings, "embedding_backend", "auto"),
                                            cache_dir=settings.models_dir)
            return cls(client, settings.collection, embeddings, chunk_size=settings.chunk_size,
                       chunk_overlap=settings.chunk_overlap, files_dir=settings.data_dir / "files",
                       hybrid=getattr(settings, "hybrid", True))
        except BaseException:
            client.close()
            raise

    # -- writing -------------------------------------------------------------------------------------
    def ingest(self, sources: Iterable[str | Path], progress: Progress | None = None,
               jq: str | None = None) -> list[IngestResult]:
        """Load, split, embed and store each source (folders walked). One result per source; never raises
        for a bad source, so the rest of the batch goes on."""
        items = expand([sources] if isinstance(sources, (str, Path)) else sources)
        keys = [source_key(item) for item in items]
        self._mark(keys, +1)
        try:
            return self._ingest(items, progress, jq)
        finally:
            self._mark(keys, -1)

    def ingesting(self) -> set[str]:
        """The sources an ingest in this process has not finished yet (the chat waits for them)."""
        with self._pending_changed:
            return {key for key, count in self._pending.items() if count > 0}

    def wait_until_stored(self, timeout: float | None = None) -> bool:
        """Block until no ingest in this process is running; False if `timeout` passed first."""
        with self._pending_changed:
            return self._pending_changed.wait_for(lambda: not +self._pending, timeout)

    def _mark(self, keys: list[str], change: int) -> None:
        with self._pending_changed:
            if change > 0:
                self._pending.update(keys)
            else:
                self._pending.subtract(keys)
                self._pending = +self._pending  # drops the finished ones
            self._pending_changed.notify_all()

    def _ingest(self, items: list, progress: Progress | None, jq: str | None) -> list[IngestResult]:
        results: list[IngestResult] = []
        shown, showing = [0.0], threading.Lock()

        def report(fraction: float, message: str) -> None:
            # Reading runs a source ahead, on its own thread: its page and OCR messages keep the bar where it is.
            with showing:
                shown[0] = max(shown[0], fraction)
                if progress:
                    progress(shown[0], message)

        def read(item) -> list[Document]:
            docs = load(item, jq=jq, progress=lambda fraction, message: report(0.0, message))
            return split(docs, self.chunk_size, self.chunk_overlap)

        # Reading (PDF text, trafilatura) runs on one thread and leaves the other core idle, so the next
        # source is read while this one is embedded. One ahead at most: memory stays one source's worth.
        with ThreadPoolExecutor(1, thread_name_prefix="ingest-read") as reader:
            upcoming = reader.submit(read, items[0]) if items else None
            for n, item in enumerate(items):
                key = source_key(item)
                lo, hi = n / len(items), (n + 1) / len(items)
                report(lo, f"reading {key}")
                reading, upcoming = upcoming, reader.submit(read, items[n + 1]) if n + 1 < len(items) else None
                try:
                    chunks = reading.result()
                    added = self._replace(key, chunks, lambda f, msg: report(lo + (hi - lo) * f, msg))
                    self._keep_original(item, chunks)
                    results.append(IngestResult(key, True, len(chunks), added))
                except LoadError as err:
                    results.append(IngestResult(key, False, error=err.reason))
                except Exception as err:  # keep the batch going; the user gets a line, not a traceback
                    results.append(IngestResult(key, False, error=f"{type(err).__name__}: {' '.join(str(err).split())}"))
                report(hi, results[-1].summary())
        return results

    def add(self, documents: list[Document], progress: Progress | None = None) -> int:
        """Store already-loaded Documents (split here if longer than a chunk). Returns chunks written."""
        chunks = split(documents, self.chunk_size, self.chunk_overlap)
        by_source: dict[str, list[Document]] = {}
        for chunk in chunks:
            by_source.setdefault(chunk.metadata.get("source", ""), []).append(chunk)
        for group in by_source.values():
            if not group[0].metadata.get("sha256"):  # Documents made elsewhere: hash their text instead
                digest = hashlib.sha256("\x00".join(c.page_content for c in group).encode()).hexdigest()
                for chunk in group:
                    chunk.metadata["sha256"] = digest
        return sum(self._replace(source, group, progress) for source, group in by_source.items())

    def _replace(self, source: str, chunks: list[Document], progress: Progress | None = None) -> int:
        from qdrant_client import models

        if not chunks:
            return 0
        sha = chunks[0].metadata.get("sha256") or ""
        for index, chunk in enumerate(chunks):
            chunk.metadata["source"] = source
            chunk.metadata.setdefault("chunk", index)  # split() numbers them; the clean-up below relies on it
        ids = [chunk_id(source, sha, chunk.metadata["chunk"]) for chunk in chunks]
        with self._lock:
            # Looked up by id, not counted by filter: embedded Qdrant counts with a Python pass over every
            # point (~1 s at 50k chunks), so a new source now costs one such pass (the delete below), not two.
            stored = len(self.client.retrieve(self.collection, ids, with_payload=False, with_vectors=False))
            if stored == len(ids) and self._count(source) == stored:
                return 0  # unchanged bytes, already stored in full
            written: list[str] = []
            try:
                for start in range(0, len(chunks), WRITE_BATCH):
                    batch = slice(start, start + WRITE_BATCH)
                    if progress:
                        progress(start / len(chunks), f"embedding {source}: {start}/{len(chunks)} chunks")
                    self.vector_store.add_documents(chunks[batch], ids=ids[batch], batch_size=WRITE_BATCH)
                    written += ids[batch]
            except BaseException:
                if written:  # all or nothing: a half-written source is removed again
                    self.client.delete(self.collection, points_selector=models.PointIdsList(points=written))
                raise
            # Whatever else this source has goes only after the new version is in: other bytes, or the same
            # bytes split differently before (a changed chunk size leaves chunks past the new last index).
            # A range rather than the id list: embedded Qdrant would hash the whole list for every point.
            current = models.Filter(must=[_match("metadata.sha256", sha), models.FieldCondition(
                key="metadata.chunk", range=models.Range(lt=len(chunks)))])
            self.client.delete(self.collection, points_selector=models.FilterSelector(filter=models.Filter(
                must=[_match("metadata.source", source)], must_not=[current])))
        if progress:
            progress(1.0, f"stored {source}: {len(chunks)} chunks")
        return len(chunks)

    def _keep_original(self, item, chunks: list[Document]) -> None:
        if self.files_dir is None or not chunks or chunks[0].metadata.get("kind") != "pdf" or is_url(item):
            return
        target = self.original(chunks[0].metadata.get("sha256", ""), must_exist=False)
        if target is not None and not target.exists():
            self.files_dir.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            shutil.copyfile(item, partial)
            partial.replace(target)  # never a half-copied file under the final name

    def original(self, sha256: str, must_exist: bool = True) -> Path | None:
        """The stored copy of a PDF by its sha256, or None."""
        if self.files_dir is None or not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):
            return None
        path = self.files_dir / f"{sha256}.pdf"
        return path if path.exists() or not must_exist else None

    def delete(self, source: str) -> int:
        """Remove every chunk of a source (file name or URL), and its stored copy. Returns how many were removed."""
        from qdrant_client import models

        with self._lock:
            count = self._count(source)
            points, _ = self.client.scroll(self.collection, scroll_filter=models.Filter(must=[_match("metadata.source", source)]),
                                           limit=1, with_payload=True, with_vectors=False)
            for point in points:
                copy = self.original(((point.payload or {}).get("metadata") or {}).get("sha256", ""))
                if copy is not None:
                    copy.unlink(missing_ok=True)
            if count:
                self.client.delete(self.collection, points_selector=models.FilterSelector(
                    filter=models.Filter(must=[_match("metadata.source", source)])))
        return count

    # -- reading -------------------------------------------------------------------------------------
    def search(self, query: str, k: int = 4, hybrid: bool | None = None) -> list[tuple[Document, float]]:
        """The k best chunks for the query, best first, each with its cosine similarity to the query.

        Hybrid (the default): Qdrant's own query fuses the dense and the BM25 candidates by reciprocal rank,
        in one call, embedded or on a server. The order is the fusion's; the score shown is still the
        cosine (from the returned vector), because the relevance threshold is one. A passage that holds
        the question's rare words, such as "label smoothing", is found although its cosine is low."""
        from qdrant_client import models

        hybrid = self.hybrid if hybrid is None else hybrid
        dense = self.embeddings.embed_query(query)
        content, metadata = self.vector_store.content_payload_key, self.vector_store.metadata_payload_key
        if hybrid:
            keywords = self.keywords.embed_query(query)
            request = dict(prefetch=[
                models.Prefetch(query=dense, using="", limit=max(k, PREFETCH)),
                models.Prefetch(query=models.SparseVector(indices=keywords.indices, values=keywords.values),
                                using=KEYWORDS, limit=max(k, PREFETCH))],
                query=models.FusionQuery(fusion=models.Fusion.RRF), with_vectors=[""])
        else:
            request = dict(query=dense, using="")
        with self._lock:
            points = self.client.query_points(self.collection, limit=k, with_payload=True, **request).points
        hits = []
        for point in points:
            payload = point.payload or {}
            vector = point.vector.get("", point.vector) if isinstance(point.vector, dict) else point.vector
            score = float(sum(a * b for a, b in zip(dense, vector))) if hybrid else float(point.score)
            hits.append((Document(page_content=payload.get(content) or "", metadata=payload.get(metadata) or {},
                                  id=str(point.id)), score))
        return hits

    def as_retriever(self, **kwargs):
        return self.vector_store.as_retriever(**kwargs)

    def list_sources(self) -> list[dict]:
        """One entry per source: source, kind, title, chunks; sorted by source."""
        from qdrant_client import models

        found: dict[str, dict] = {}
        include = models.PayloadSelectorInclude(include=["metadata.source", "metadata.kind", "metadata.title"])
        offset = None
        with self._lock:
            while True:
                points, offset = self.client.scroll(self.collection, limit=2048, offset=offset,
                                                    with_payload=include, with_vectors=False)
                for point in points:
                    meta = (point.payload or {}).get("metadata") or {}
                    entry = found.setdefault(meta.get("source", "?"), {
                        "source": meta.get("source", "?"), "kind": meta.get("kind"), "title": meta.get("title"),
                        "chunks": 0})
                    entry["chunks"] += 1
                if offset is None:
                    break
        return sorted(found.values(), key=lambda e: e["source"].lower())

    def chunks(self) -> Iterator[Document]:
        """Every stored chunk as a LangChain Document (its text, its metadata, id = its point id), in the
        collection's id order. Pages of 1024 are read under the store's lock, which is not held between
        pages: a chunk written or deleted meanwhile may or may not be seen."""
        content, metadata = self.vector_store.content_payload_key, self.vector_store.metadata_payload_key
        offset = None
        while True:
            with self._lock:
                points, offset = self.client.scroll(self.collection, limit=1024, offset=offset, with_payload=True,
                                                    with_vectors=False)
            for point in points:
                payload = point.payload or {}
                yield Document(page_content=payload.get(content) or "", metadata=payload.get(metadata) or {},
                               id=str(point.id))
            if offset is None:
                return

    def is_empty(self) -> bool:
        """No chunk stored (one scroll of one point: counting is a pass over every point in local mode)."""
        with self._lock:
            points, _ = self.client.scroll(self.collection, limit=1, with_payload=False, with_vectors=False)
        return not points

    def count(self) -> int:
        with self._lock:
            return self.client.count(self.collection, exact=True).count

    def _count(self, source: str) -> int:
        from qdrant_client import models

        must = [_match("metadata.source", source)]
        return self.client.count(self.collection, count_filter=models.Filter(must=must), exact=True).count

    def close(self) -> None:
        with self._lock:
            self.client.close()
        with _STORES_LOCK:
            for key, store in list(_STORES.items()):
                if store is self:
                    del _STORES[key]


def _match(key: str, value: str):
    from qdrant_client import models

    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def open_client(settings):
    """QdrantClient for a server when CHATAPP_QDRANT_URL is set, else embedded on disk under the data folder."""
    from qdrant_client import QdrantClient

    if settings.qdrant_url:
        client = QdrantClient(url=settings.qdrant_url, api_key=settings.qdrant_api_key, timeout=30)
        try:
            client.get_collections()
        except Exception as err:
            client.close()
            raise StoreError(f"cannot reach Qdrant at {settings.qdrant_url}: {type(err).__name__}") from None
        return client
    path = Path(settings.qdrant_path)
    path.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # "local mode is not recommended past 20,000 points": measured, see bench
            warnings.simplefilter("ignore")
            client = QdrantClient(path=str(path))
    except RuntimeError as err:
        if "already accessed" in str(err):
            raise StoreError(f"the store {path} is in use by another process (the app?); stop it, "
                             "or point CHATAPP_QDRANT_URL at a Qdrant server") from None
        raise
    _tune_local(client)
    return client


def _tune_local(client, search: bool = True) -> None:
    """Two fixes for qdrant-client's embedded (local) mode, which exposes no setting for either; on a
    layout this does not recognise, nothing changes. A server is not touched.

    - Writes: it commits SQLite once per point with a full fsync each time (~90 points/s on a busy disk).
      WAL with synchronous=NORMAL keeps the file consistent after a crash (a power cut may lose the last
      few writes, which re-ingesting restores) and writes thousands of points a second.
    - Search: it turns the query list into a float64 array, so a float32 vector matrix is copied to float64
      on every query (~100 ms at 50k chunks). Keeping the matrix in float64, as qdrant-client itself does
      after reopening a store, leaves one matrix-vector product (bench/results/ingest.md)."""
    import numpy as np

    local = getattr(client, "_client", None)
    for collection in getattr(local, "collections", {}).values():
        connection = getattr(getattr(collection, "storage", None), "storage", None)
        if connection is not None and hasattr(connection, "execute"):
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
            except Exception:  # read-only or an unexpected layout: keep qdrant-client's defaults
                pass
        vectors = getattr(collection, "vectors", None)
        if search and isinstance(vectors, dict):
            for name, matrix in vectors.items():
                if isinstance(matrix, np.ndarray) and matrix.dtype == np.float32:
                    vectors[name] = matrix.astype(np.float64)


_STORES: dict[str, DocumentStore] = {}
_STORES_LOCK = threading.Lock()


def get_store(settings) -> DocumentStore:
    """The process's one store for these settings (embedded Qdrant allows one client per folder)."""
    key = f"{settings.qdrant_url or Path(settings.qdrant_path).resolve()}#{settings.collection}"
    with _STORES_LOCK:
        if key not in _STORES:
            _STORES[key] = DocumentStore.from_settings(settings)
        return _STORES[key]
