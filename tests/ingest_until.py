"""Run by tests/test_store_crash.py as a real process to kill: ingest SOURCES into the store of a data
folder, print each progress message, and at the first one holding --stop print STOPPED and wait there,
so the test can SIGKILL it at that moment. With --list: print the listed and the interrupted sources.
--engine server: the server code path over qdrant-client's local mode in DATA/server (a server's stand-in)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from qdrant_client import QdrantClient

from chatapp.settings import Settings
from loaders.embeddings import SentenceEmbeddings
from loaders.server import ServerVectorStore
from loaders.store import DocumentStore


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--engine", choices=["edge", "server"], default="edge")
    p.add_argument("--stop", default=None)
    p.add_argument("--list", action="store_true")
    p.add_argument("sources", nargs="*")
    args = p.parse_args()
    settings = Settings.from_env(data_dir=args.data)
    if args.engine == "edge":
        store = DocumentStore.from_settings(settings)
    else:
        embeddings = SentenceEmbeddings(settings.embedding_model, cache_dir=settings.models_dir)
        store = DocumentStore(ServerVectorStore(QdrantClient(path=str(args.data / "server")), settings.collection,
                                                embeddings), embeddings)
    if args.list:
        print(json.dumps({"listed": store.list_sources(), "interrupted": store.interrupted()}))
        store.close()
        return

    def progress(fraction: float, message: str) -> None:
        print(message, flush=True)
        if args.stop and args.stop in message:
            print("STOPPED", flush=True)
            time.sleep(3600)

    print("unfinished:", json.dumps(store.interrupted()), flush=True)
    for result in store.ingest(args.sources, progress=progress):
        print(result.summary(), flush=True)
    store.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
