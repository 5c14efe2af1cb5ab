"""Copying a store between engines: a store that qdrant-client's local mode wrote (DATA/qdrant, earlier
versions) into Qdrant Edge on first open, and `python -m loaders push URL`, the embedded store to a
Qdrant server. Ids, dense vectors and payloads are copied as they are; BM25 vectors too (computed for
chunks of stores made before hybrid search). And `python -m loaders reindex`: the embedded store copied
with its dense vectors made again by another embedding model.
"""
from __future__ import annotations

import shutil
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Callable

from qdrant_client import QdrantClient, models

from loaders.documents import indexed_text
from loaders.edge import EdgeVectorStore
from loaders.layout import DENSE, KEYWORDS, Hit, StoredPoint
from loaders.server import VISIBLE, create_collection

Progress = Callable[[float, str], None]
BATCH = 1024


class LocalModeInUse(Exception):
    """Another process holds the local-mode folder being migrated."""


def has_local_mode_store(path: Path, collection: str) -> bool:
    return (Path(path) / "collection" / collection).is_dir()


def _local_client(path: Path) -> QdrantClient:
    try:
        with warnings.catch_warnings():  # "local mode is not recommended past 20,000 points": the reason we leave
            warnings.simplefilter("ignore")
            return QdrantClient(path=str(path))
    except RuntimeError as err:
        if "already accessed" in str(err):
            raise LocalModeInUse(str(path)) from None
        raise


def _points(client: QdrantClient, collection: str, only_complete: bool = False):
    offset = None
    while True:
        records, offset = client.scroll(collection, limit=BATCH, offset=offset, with_payload=True, with_vectors=True,
                                        scroll_filter=VISIBLE if only_complete else None)
        batch = []
        for r in records:
            vector = r.vector if isinstance(r.vector, dict) else {DENSE: r.vector}
            sparse = vector.get(KEYWORDS)
            batch.append(StoredPoint(str(r.id), list(vector[DENSE]), r.payload or {},
                                     (list(sparse.indices), list(sparse.values)) if sparse is not None else None))
        yield batch
        if offset is None:
            return


def migrate_local_mode(local_path: Path, collection: str, target: Path, embeddings, progress: Progress) -> int:
    """Copy the local-mode collection into a new Edge shard at `target`. It is built beside the target and
    renamed into place when complete: a migration cut short starts again at the next open. The local-mode
    folder is left as it was (delete it once the app works from the new store). Returns points copied."""
    client = _local_client(local_path)
    building = target.with_name(target.name + ".migrating")
    shutil.rmtree(building, ignore_errors=True)
    try:
        total = client.count(collection, exact=True).count
        dimension = client.get_collection(collection).config.params.vectors
        dimension = dimension.size if hasattr(dimension, "size") else dimension[DENSE].size
        store = EdgeVectorStore(building, embeddings, dimension=dimension)
        done = 0
        progress(0.0, f"moving {total} chunks from qdrant-client's local mode ({local_path}) to Qdrant Edge")
        try:
            for batch in _points(client, collection):
                store.write(batch)
                done += len(batch)
                progress(done / max(total, 1), f"moving the store to Qdrant Edge: {done}/{total} chunks")
        finally:
            store.close()
    finally:
        client.close()
    building.rename(target)
    return done


def push(store: EdgeVectorStore, target: str, collection: str, api_key: str | None = None,
         progress: Progress | None = None) -> int:
    """Copy every complete chunk of the embedded store to a Qdrant server at URL `target` (or a
    qdrant-client local folder, when `target` is not a URL). The collection is made with the same
    layout when missing; points already there with the same ids are overwritten. Returns points copied."""
    if target.startswith(("http://", "https://")):
        client = QdrantClient(url=target, api_key=api_key, timeout=60)
    else:
        client = _local_client(Path(target))
    try:
        total = store.count()
        if not client.collection_exists(collection):
            create_collection(client, collection, len(store.embeddings.embed_query("dimension probe")))
        done = 0
        batch: list[StoredPoint] = []
        for point in store.scroll(vectors=True):
            batch.append(point)
            if len(batch) == BATCH:
                done += _upsert(client, collection, batch)
                batch = []
                if progress:
                    progress(done / max(total, 1), f"pushed {done}/{total} chunks")
        done += _upsert(client, collection, batch)
        if progress:
            progress(1.0, f"pushed {done}/{total} chunks")
        return done
    finally:
        client.close()


def _upsert(client: QdrantClient, collection: str, batch: list[StoredPoint]) -> int:
    if batch:
        client.upsert(collection, points=[models.PointStruct(id=p.id, payload=p.payload, vector={
            DENSE: p.dense, KEYWORDS: models.SparseVector(indices=(p.sparse or ([], []))[0], values=(p.sparse or ([], []))[1])})
            for p in batch])
    return len(batch)


REINDEX_BATCH = 256


def replaced_path(path: Path) -> Path:
    """Where reindex() keeps the old store while it swaps the new one in (open_engine restores it from there)."""
    return path.with_name(path.name + ".replaced")


def reindex(store: EdgeVectorStore, embeddings, progress: Progress) -> int:
    """Embed every chunk of the embedded store again with `embeddings` (another model, of any size) into a new
    shard built beside it, then swap it in and close `store`. Ids, payloads and BM25 vectors are kept; unfinished
    sources stay unfinished. Cut short, the old store is left as it was. Returns the chunks embedded."""
    path = Path(store.path)
    building = path.with_name(path.name + ".reindexing")
    shutil.rmtree(building, ignore_errors=True)
    total = store.count(pending=None)
    target = EdgeVectorStore(building, embeddings, dimension=len(embeddings.embed_query("dimension probe")))
    done = 0
    progress(0.0, f"embedding {total} chunks again")
    try:
        batch: list[StoredPoint] = []
        for point in store.scroll(vectors=True, pending=None):
            batch.append(point)
            if len(batch) == REINDEX_BATCH:
                done += _reembedded(target, embeddings, batch)
                progress(done / max(total, 1), f"embedding the store again: {done}/{total} chunks")
                batch = []
        done += _reembedded(target, embeddings, batch)
    finally:
        target.close()
    store.close()
    old = replaced_path(path)
    shutil.rmtree(old, ignore_errors=True)
    path.rename(old)  # killed between these two renames, the next open renames `old` back
    building.rename(path)
    shutil.rmtree(old)
    progress(1.0, f"embedded {done} chunks again")
    return done


def _reembedded(target: EdgeVectorStore, embeddings, batch: list[StoredPoint]) -> int:
    if batch:
        dense = embeddings.embed_documents([indexed_text(Hit(p.id, p.payload, 0.0).document()) for p in batch])
        target.write([replace(p, dense=vector) for p, vector in zip(batch, dense)])
    return len(batch)
