"""The document store: sources in, chunks out, over one of two engines with the same layout and query
(loaders/layout.py): Qdrant Edge embedded on disk under the data folder (loaders/edge.py), or
qdrant-client for a Qdrant server/cluster when CHATAPP_QDRANT_URL is set (loaders/server.py).

    store = get_store(settings)          # one per process: the embedded store locks its folder
    store.ingest(["paper.pdf", "https://youtu.be/..."], progress=lambda f, msg: ...)
    store.search("what is attention?", k=4)   # [(Document, cosine similarity), ...]

A source is stored under its key (file name or URL). Chunk ids are uuid5(source, sha256, chunk index):
re-ingesting unchanged bytes adds nothing, changed bytes replace the old chunks, and a failed source
leaves nothing behind (new chunks are written before old ones are removed, and removed again on error).
A source shows (list, search, count) only once all its chunks are written: see `_replace`.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import re
import shutil
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from langchain_core.documents import Document
from qdrant_client import QdrantClient

from loaders import transfer
from loaders.documents import LoadError, expand, indexed_text, is_url, load, source_key, split
from loaders.edge import EdgeVectorStore, StoreInUse
from loaders.layout import CONTENT, PENDING, WRITING, Hit, StoredPoint, payload
from loaders.server import ServerVectorStore

log = logging.getLogger("loaders.store")

Progress = Callable[[float, str], None]
CHUNK_NAMESPACE = uuid.UUID("6f0c6a52-3c47-4d1e-9a55-2f6a0c1f7a10")  # fixed: ids must not change between runs
WRITE_BATCH = 256  # chunks embedded and written per step: bounds memory and paces the progress bar
SAME_EMBEDDER = 0.8  # embedder_agreement below this: the store's vectors come from another model
# Copies kept for the chat's page pictures, by kind; an e-mail only when it has a PDF attached.
ORIGINAL_SUFFIX = {"pdf": ".pdf", "image": ".picture", "email": ".eml"}


@dataclass
class IngestResult:
    source: str
    ok: bool
    chunks: int = 0   # chunks the source has in the store after ingesting
    added: int = 0    # chunks written by this run (0 when unchanged)
    error: str | None = None  # one-line reason when ok is False
    resumed: int = 0  # chunks an interrupted ingest had written, kept rather than embedded again

    def summary(self) -> str:
        if not self.ok:
            return f"FAILED {self.source}: {self.error}"
        if self.added == 0:
            return f"ok     {self.source}: unchanged, {self.chunks} chunks"
        if self.resumed:
            return (f"ok     {self.source}: {self.chunks} chunks (resumed: {self.resumed} were written "
                    "before an interrupted ingest)")
        return f"ok     {self.source}: {self.chunks} chunks"

    def as_dict(self) -> dict:
        return asdict(self)


class StoreError(Exception):
    """The store cannot be opened (folder in use, server unreachable). str() is one line."""


def chunk_id(source: str, sha256: str, index: int) -> str:
    return str(uuid.uuid5(CHUNK_NAMESPACE, f"{source}\n{sha256}\n{index}"))


class DocumentStore:
    """Ingest, search, list and delete sources over one engine: `vector_store` is the LangChain VectorStore,
    EdgeVectorStore (embedded) or ServerVectorStore (a server), with the same engine operations."""

    def __init__(self, vector_store, embeddings, *, chunk_size: int = 1000, chunk_overlap: int = 150,
                 files_dir: Path | None = None, hybrid: bool = True):
        self.vector_store, self.embeddings = vector_store, embeddings
        self.keywords = vector_store.keywords
        self.hybrid = hybrid  # search by dense and BM25 vectors fused by reciprocal rank; False: dense only
        self.chunk_size, self.chunk_overlap = chunk_size, chunk_overlap
        # A copy of each stored PDF, by its sha256: the chat draws the cited page from it.
        self.files_dir = Path(files_dir) if files_dir else None
        self._lock = threading.RLock()  # one writer at a time; searches do not wait for it
        self._pending: Counter[str] = Counter()  # sources an ingest in this process is storing now
        self._pending_changed = threading.Condition()

    @classmethod
    def from_settings(cls, settings, progress: Progress | None = None, check_embedder: bool = True) -> "DocumentStore":
        """The store of these settings. It refuses (StoreError) to open with an embedder other than the one its
        vectors came from, unless `check_embedder` is False (`python -m loaders reindex` opens it so)."""
        from loaders.embeddings import SentenceEmbeddings  # here: loading the embedder is the slow part of start-up

        embeddings = SentenceEmbeddings(settings.embedding_model, backend=getattr(settings, "embedding_backend", "auto"),
                                        cache_dir=settings.models_dir)
        engine = open_engine(settings, embeddings, progress)
        try:
            store = cls(engine, embeddings, chunk_size=settings.chunk_size, chunk_overlap=settings.chunk_overlap,
                        files_dir=settings.data_dir / "files", hybrid=getattr(settings, "hybrid", True))
            agreement = store.embedder_agreement() if check_embedder else None
            if agreement is not None and agreement < SAME_EMBEDDER:
                raise StoreError(
                    f"the store's vectors come from another embedding model than CHATAPP_EMBEDDING_MODEL="
                    f"{settings.embedding_model} (stored chunks embedded again: cosine {agreement:.2f}), so its "
                    f"searches would match nothing; run `python -m loaders reindex` to embed its {store.count()} "
                    "chunks again with this model, or use another CHATAPP_DATA_DIR")
        except BaseException:
            engine.close()
            raise
        engine.index_in_background()  # a store opened with many unindexed points (a migration, a killed build)
        return store

    def embedder_agreement(self, samples: int = 3) -> float | None:
        """How well this store's embedder reproduces the stored vectors: the median cosine between a few stored
        chunks' vectors and their indexed text embedded again (0 when the sizes differ); None when empty.
        The same model gives >= 0.99 (int8 or fp32; >= 0.91 even for chunks indexed before their header grew),
        another one far less (all-MiniLM-L6-v2 with CLS pooling instead of mean: 0.31-0.45)."""
        points = list(itertools.islice(self.vector_store.scroll(vectors=True, limit=samples), samples))
        if not points:
            return None
        fresh = self.embeddings.embed_documents([indexed_text(Hit(p.id, p.payload, 0.0).document()) for p in points])
        cosines = sorted(sum(a * b for a, b in zip(new, p.dense)) if len(new) == len(p.dense) else 0.0
                         for new, p in zip(fresh, points))
        return cosines[len(cosines) // 2]

    # -- writing -------------------------------------------------------------------------------------
    def ingest(self, sources: Iterable[str | Path], progress: Progress | None = None,
               jq: str | None = None, started: Callable[[], None] | None = None) -> list[IngestResult]:
        """Load, split, embed and store each source (folders walked). One result per source; never raises
        for a bad source, so the rest of the batch goes on. `started` is called once `ingesting()` names
        these sources (a background ingest returns to its caller then)."""
        items = expand([sources] if isinstance(sources, (str, Path)) else sources)
        keys = [source_key(item) for item in items]
        self._mark(keys, +1)
        if started:
            started()
        try:
            return self._ingest(items, progress, jq)
        finally:
            self._mark(keys, -1)
            self.vector_store.index_in_background()  # embedded: an HNSW build once enough points are unindexed

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
                    resumed: list[int] = []
                    added = self._replace(key, chunks, lambda f, msg: report(lo + (hi - lo) * f, msg), resumed)
                    self._keep_original(item, chunks)
                    results.append(IngestResult(key, True, len(chunks), added, resumed=sum(resumed)))
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

    def _replace(self, source: str, chunks: list[Document], progress: Progress | None = None,
                 resumed: list[int] | None = None) -> int:
        """Store a source's chunks, crash-safe: they are written flagged pending (invisible to search, list
        and count), then the source's other chunks go, then the flag is lifted in one update. A process
        killed meanwhile leaves only pending chunks, which the next ingest of the source reuses."""
        if not chunks:
            return 0
        sha = chunks[0].metadata.get("sha256") or ""
        for index, chunk in enumerate(chunks):
            chunk.metadata["source"] = source
            chunk.metadata.setdefault("chunk", index)  # split() numbers them; the clean-up below relies on it
        ids = [chunk_id(source, sha, chunk.metadata["chunk"]) for chunk in chunks]
        engine = self.vector_store
        if self._lock.acquire(blocking=False):  # only to say why a source sits at 0% behind another
            self._lock.release()
        elif progress:
            progress(0.0, f"waiting: another source is being written before {source}")
        with self._lock:
            have = engine.existing(ids)
            if len(have) == len(ids) and not any(p.get(PENDING) for p in have.values()) \
                    and engine.count(source, pending=None) == len(ids):
                return 0  # unchanged bytes, already stored in full
            # Pending chunks with the same text were written by an ingest that was killed: kept, not redone.
            done = {i for i, chunk in zip(ids, chunks)
                    if have.get(i, {}).get(PENDING) == WRITING and have[i].get(CONTENT) == chunk.page_content}
            if resumed is not None:
                resumed.append(len(done))
            todo = [(i, chunk) for i, chunk in zip(ids, chunks) if i not in done]
            written: list[str] = []
            try:
                for start in range(0, len(todo), WRITE_BATCH):
                    batch = todo[start:start + WRITE_BATCH]
                    if progress:
                        progress((len(done) + start) / len(chunks),
                                 f"embedding {source}: {len(done) + start}/{len(chunks)} chunks")
                    texts = [indexed_text(chunk) for _, chunk in batch]
                    dense = self.embeddings.embed_documents(texts)
                    sparse = self.keywords.embed_documents(texts)
                    engine.write([StoredPoint(i, vector, payload(chunk.page_content, chunk.metadata, pending=True),
                                              (keywords.indices, keywords.values))
                                  for (i, chunk), vector, keywords in zip(batch, dense, sparse)])
                    written += [i for i, _ in batch]
            except BaseException:
                if written:  # a failed source leaves nothing behind (a killed one: see the docstring)
                    engine.delete(written)
                raise
            # Whatever else this source has goes before the new version shows: other bytes, or the same
            # bytes split differently before (a changed chunk size leaves chunks past the new last index).
            engine.remove(source, keep_sha=sha, keep_below=len(chunks))
            engine.finish(source)
        if progress:
            progress(1.0, f"stored {source}: {len(chunks)} chunks")
        return len(chunks)

    def _keep_original(self, item, chunks: list[Document]) -> None:
        kind = chunks[0].metadata.get("kind") if chunks else None
        if self.files_dir is None or kind not in ORIGINAL_SUFFIX or is_url(item):
            return
        if kind == "email" and not any(chunk.metadata.get("attachment_page") for chunk in chunks):
            return
        target = self.original(chunks[0].metadata.get("sha256", ""), must_exist=False, kind=kind)
        if target is not None and not target.exists():
            self.files_dir.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            shutil.copyfile(item, partial)
            partial.replace(target)  # never a half-copied file under the final name

    def original(self, sha256: str, must_exist: bool = True, kind: str = "pdf") -> Path | None:
        """The stored copy of a PDF, picture or e-mail (`kind`) by its sha256, or None."""
        if self.files_dir is None or not re.fullmatch(r"[0-9a-f]{64}", sha256 or "") or kind not in ORIGINAL_SUFFIX:
            return None
        path = self.files_dir / f"{sha256}{ORIGINAL_SUFFIX[kind]}"
        return path if path.exists() or not must_exist else None

    def delete(self, source: str) -> int:
        """Remove every chunk of a source (file name or URL; pending ones too), and its stored copy. Returns
        how many complete chunks were removed."""
        with self._lock:
            count = self.vector_store.count(source)
            shas = {(p.payload.get("metadata") or {}).get("sha256", "")
                    for p in self.vector_store.scroll(["metadata.sha256"], pending=None, source=source)}
            for sha in shas:
                for kind in ORIGINAL_SUFFIX:
                    copy = self.original(sha, kind=kind)
                    if copy is not None:
                        copy.unlink(missing_ok=True)
            if count or self.vector_store.count(source, pending=True):
                self.vector_store.remove(source)
        return count

    def interrupted(self) -> dict[str, int]:
        """Sources an ingest was killed while writing: source -> chunks written. None of them is listed,
        searched or counted; ingesting the source again finishes it from there."""
        found: Counter[str] = Counter(p.source for p in self.vector_store.scroll(["metadata.source"], pending=True))
        busy = self.ingesting()
        return {source: n for source, n in sorted(found.items()) if source not in busy}

    def reindex(self, progress: Progress | None = None) -> int:
        """Embed every stored chunk again with this store's embedder (after CHATAPP_EMBEDDING_MODEL changed);
        returns the chunks embedded. The embedded store only: a server's collection is filled anew instead."""
        if not isinstance(self.vector_store, EdgeVectorStore):
            raise StoreError("reindex rebuilds the embedded store; for a Qdrant server, ingest the sources into "
                             "a new collection (CHATAPP_COLLECTION)")
        with self._lock:
            path = self.vector_store.path
            done = transfer.reindex(self.vector_store, self.embeddings, progress or _log_progress)
            self.vector_store = EdgeVectorStore(path, self.embeddings)
            self.keywords = self.vector_store.keywords
        return done

    # -- reading -------------------------------------------------------------------------------------
    def search(self, query: str, k: int = 4, hybrid: bool | None = None) -> list[tuple[Document, float]]:
        """The k best complete chunks for the query, best first, each with its cosine similarity to it.

        Hybrid (the default): the engine's own query fuses the dense and the BM25 candidates by reciprocal
        rank, embedded or on a server. The order is the fusion's; the score shown is still the cosine (from
        the returned vector), because the relevance threshold is one. A passage that holds the question's
        rare words, such as "label smoothing", is found although its cosine is low."""
        hybrid = self.hybrid if hybrid is None else hybrid
        return self.vector_store.similarity_search_with_score(query, k, hybrid=hybrid)

    def mentions(self, word: str) -> bool:
        """Whether some complete chunk holds `word`, as the BM25 index holds it (stemmed, case aside). One
        keyword lookup: the chat asks it of a name that none of its candidate passages holds."""
        keywords = self.keywords.embed_query(word)
        return bool(keywords.indices) and self.vector_store.holds_keyword(keywords)

    def as_retriever(self, **kwargs):
        return self.vector_store.as_retriever(**kwargs)

    def list_sources(self) -> list[dict]:
        """One entry per complete source: source, kind, title, chunks; sorted by source."""
        found: dict[str, dict] = {}
        for point in self.vector_store.scroll(["metadata.source", "metadata.kind", "metadata.title"], limit=2048):
            meta = point.payload.get("metadata") or {}
            entry = found.setdefault(meta.get("source", "?"), {
                "source": meta.get("source", "?"), "kind": meta.get("kind"), "title": meta.get("title"), "chunks": 0})
            entry["chunks"] += 1
        return sorted(found.values(), key=lambda e: e["source"].lower())

    def chunks(self) -> Iterator[Document]:
        """Every complete chunk as a LangChain Document (its text, its metadata, id = its point id), in the
        collection's id order. Pages are read one at a time: a chunk written or deleted meanwhile may or
        may not be seen."""
        for point in self.vector_store.scroll():
            yield Hit(point.id, point.payload, 0.0).document()

    def is_empty(self) -> bool:
        return self.count() == 0

    def count(self) -> int:
        return self.vector_store.count()

    def close(self) -> None:
        with self._lock:
            self.vector_store.close()
        with _STORES_LOCK:
            for key, store in list(_STORES.items()):
                if store is self:
                    del _STORES[key]


def edge_path(settings) -> Path:
    """The embedded store's folder: DATA/store/COLLECTION (local mode's was DATA/qdrant, migrated from)."""
    return Path(settings.data_dir) / "store" / settings.collection


def open_engine(settings, embeddings, progress: Progress | None = None):
    """ServerVectorStore when CHATAPP_QDRANT_URL is set, else the embedded EdgeVectorStore; a store that
    qdrant-client's local mode wrote under DATA/qdrant is copied into it first (loaders/transfer.py)."""
    if settings.qdrant_url:
        client = QdrantClient(url=settings.qdrant_url, api_key=settings.qdrant_api_key, timeout=30)
        try:
            client.get_collections()
            return ServerVectorStore(client, settings.collection, embeddings)
        except Exception as err:
            client.close()
            raise StoreError(f"cannot reach Qdrant at {settings.qdrant_url}: {type(err).__name__}") from None
    path = edge_path(settings)
    if not path.exists() and transfer.replaced_path(path).exists():  # a reindex killed as it swapped stores
        transfer.replaced_path(path).rename(path)
    try:
        if not path.exists() and transfer.has_local_mode_store(settings.qdrant_path, settings.collection):
            transfer.migrate_local_mode(settings.qdrant_path, settings.collection, path, embeddings,
                                        progress or _log_progress)
        return EdgeVectorStore(path, embeddings)
    except (StoreInUse, transfer.LocalModeInUse):
        raise StoreError(f"the store {path.parent} is in use by another process (the app?); stop it, "
                         "or point CHATAPP_QDRANT_URL at a Qdrant server") from None


def _log_progress(fraction: float, message: str) -> None:
    log.warning("%3.0f%% %s", 100 * fraction, message)


_STORES: dict[str, DocumentStore] = {}
_STORES_LOCK = threading.Lock()


def get_store(settings) -> DocumentStore:
    """The process's one store for these settings (embedded Qdrant allows one client per folder)."""
    key = f"{settings.qdrant_url or Path(settings.qdrant_path).resolve()}#{settings.collection}"
    with _STORES_LOCK:
        if key not in _STORES:
            _STORES[key] = DocumentStore.from_settings(settings)
        return _STORES[key]
