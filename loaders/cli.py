"""python -m loaders ingest|search|list|delete|push|reindex: the document store from the command line.

Every command reads CHATAPP_* settings (CHATAPP_DATA_DIR for the embedded store, CHATAPP_QDRANT_URL for a
server). Failures print one line and exit non-zero; no tracebacks.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

EPILOG = """examples:
  python -m loaders ingest paper.pdf notes/ https://youtu.be/VIDEO_ID
  python -m loaders ingest data.json --jq '.items[].body'
  python -m loaders search "what is multi-head attention?" --k 4 --json
  python -m loaders list --json
  python -m loaders delete paper.pdf
  python -m loaders push http://qdrant.example:6333
  CHATAPP_EMBEDDING_MODEL=BAAI/bge-small-en-v1.5 python -m loaders reindex

Sources are stored under their file name (or URL): ingesting a file again adds nothing when its bytes are
unchanged and replaces its chunks when they changed. A source shows only once all its chunks are written;
an ingest that was killed is finished by ingesting the same sources again. The embedded store (Qdrant Edge,
DATA/store) is used by one process at a time. Settings: CHATAPP_DATA_DIR (default ./data),
CHATAPP_QDRANT_URL, CHATAPP_COLLECTION, CHATAPP_EMBEDDING_MODEL, CHATAPP_CHUNK_SIZE, CHATAPP_CHUNK_OVERLAP."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loaders", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Load documents (PDF with OCR, HTML, DOCX, DOC, PPTX, PPT, XLSX, XLS, ODT, ODS, ODP, RTF, "
                                            "EML, CSV, EPUB, JSON/JSONL, transcripts, text, pictures by OCR) "
                                            "into the Qdrant store, and search them.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ingest = sub.add_parser("ingest", help="load, split, embed and store files, folders or URLs",
                            description="Load, split, embed and store each source. Folders are walked. "
                                        "One summary line per source; exit 1 if any source failed.")
    ingest.add_argument("sources", nargs="+", metavar="PATH_OR_URL")
    ingest.add_argument("--jq", help="jq expression choosing the text of JSON/JSONL sources (the jq library; each result is one Document)")
    ingest.add_argument("--json", action="store_true", help="one JSON object per source on stdout")
    search = sub.add_parser("search", help="the chunks closest to each query",
                            description="Search the store. With --json: one line per query, "
                                        '{"query": ..., "hits": [{"text", "source", "page", "score"}, ...]}.')
    search.add_argument("queries", nargs="+", metavar="QUERY")
    search.add_argument("--k", type=int, default=None, help="hits per query (default CHATAPP_TOP_K, 4), chosen as the chat "
                        "chooses: the best evidence among CHATAPP_CANDIDATES (20) hybrid hits")
    search.add_argument("--json", action="store_true", help="JSON lines on stdout")
    listing = sub.add_parser("list", help="the stored sources with their chunk counts")
    listing.add_argument("--json", action="store_true", help="a JSON array on stdout")
    delete = sub.add_parser("delete", help="remove a source's chunks (by file name or URL, as `list` shows)")
    delete.add_argument("source", metavar="SOURCE")
    delete.add_argument("--json", action="store_true", help='{"source": ..., "deleted": N} on stdout')
    push = sub.add_parser("push", help="copy the embedded store to a Qdrant server",
                          description="Copy every stored chunk (ids, vectors, payloads) of the embedded store to "
                                      "a Qdrant server, into a collection of the same name and layout (made when "
                                      "missing; points with the same ids are overwritten). Then set "
                                      "CHATAPP_QDRANT_URL=URL to use it. URL may also be a folder: "
                                      "qdrant-client's local mode there.")
    push.add_argument("url", metavar="URL")
    push.add_argument("--api-key", default=None, help="the server's API key (default CHATAPP_QDRANT_API_KEY)")
    push.add_argument("--collection", default=None, help="target collection (default: the same name)")
    push.add_argument("--json", action="store_true", help='{"pushed": N, "url": ..., "collection": ...} on stdout')
    reindex = sub.add_parser("reindex", help="embed every stored chunk again with CHATAPP_EMBEDDING_MODEL",
                             description="After changing CHATAPP_EMBEDDING_MODEL: embed every chunk of the embedded "
                                         "store again with the new model (the store refuses to open with another "
                                         "model's vectors). The old store stays until the new one is complete.")
    reindex.add_argument("--json", action="store_true", help='{"reindexed": N} on stdout')
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")  # library deprecation chatter is not the user's business here
    from chatapp.settings import Settings

    from loaders.store import DocumentStore, StoreError, get_store

    try:
        settings = Settings.from_env()
        # reindex opens a store whose vectors came from another model: what it is there to mend
        store = DocumentStore.from_settings(settings, check_embedder=False) if args.command == "reindex" \
            else get_store(settings)
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        print(f"error: cannot open the store: {type(err).__name__}: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](store, settings, args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        print(f"error: {type(err).__name__}: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    finally:
        store.close()


def cmd_ingest(store, settings, args) -> int:
    from tqdm import tqdm

    from loaders.documents import expand

    total = len(expand(args.sources))
    unfinished = store.interrupted()
    if unfinished:
        print(f"an earlier ingest was interrupted: continuing where it stopped ({len(unfinished)} unfinished: "
              f"{', '.join(unfinished)[:200]})", file=sys.stderr)
    with tqdm(total=total, unit="source", file=sys.stderr, dynamic_ncols=True,
              bar_format="{l_bar}{bar}| {n:.1f}/{total} sources [{elapsed}<{remaining}] {postfix}") as bar:
        def progress(fraction: float, message: str) -> None:
            bar.n = round(fraction * total, 2)
            bar.set_postfix_str(message[:60], refresh=True)

        def summary(result) -> None:
            tqdm.write(json.dumps(result.as_dict()) if args.json else result.summary(), file=sys.stdout)

        results = []
        for source in args.sources:  # per argument, so each summary line appears as soon as it is known
            done = len(results)
            part = len(expand([source])) or 1
            for result in store.ingest([source], jq=args.jq, progress=lambda f, m: progress((done + f * part) / total, m)):
                results.append(result)
                summary(result)
        if not results:
            tqdm.write("nothing to ingest (empty folder?)", file=sys.stderr)
    failed = [r for r in results if not r.ok]
    if not args.json:
        added = sum(r.added for r in results)
        print(f"{len(results) - len(failed)} of {len(results)} sources stored, {added} new chunks"
              + (f", {len(failed)} failed" if failed else ""), file=sys.stderr)
    return 1 if failed or not results else 0


def cmd_search(store, settings, args) -> int:
    from chatapp import evidence
    from loaders.documents import clock, place

    k = args.k or settings.top_k
    if k < 1:
        print("error: --k must be at least 1", file=sys.stderr)
        return 2
    for query in args.queries:
        hits = evidence.rerank(query, store.search(query, k=max(k, settings.candidates)), k)
        if args.json:
            print(json.dumps({"query": query, "hits": [
                {"text": doc.page_content, "source": doc.metadata.get("source"), "page": doc.metadata.get("page"),
                 "score": round(float(score), 4),
                 # a sheet/row, slide, chapter or heading path, for the formats that have one
                 **({"location": doc.metadata["location"]} if doc.metadata.get("location") else {})}
                for doc, score in hits]}, ensure_ascii=False))
            continue
        print(f"# {query}")
        if not hits:
            print("  (no documents stored yet: python -m loaders ingest PATH)")
        for rank, (doc, score) in enumerate(hits, 1):
            where = place(doc.metadata, page=" p.{}", start=lambda seconds: f" @{clock(seconds)}")
            text = " ".join(doc.page_content.split())
            print(f"{rank}. [{score:.3f}] {where}\n   {text[:300]}{'…' if len(text) > 300 else ''}")
    return 0


def cmd_list(store, settings, args) -> int:
    sources = store.list_sources()
    unfinished = store.interrupted()
    if unfinished:  # not listed: their ingest was killed before all their chunks were written
        print(f"not listed, an ingest was interrupted: {', '.join(unfinished)[:200]} (ingest again to finish, "
              "or delete)", file=sys.stderr)
    if args.json:
        print(json.dumps(sources, ensure_ascii=False))
        return 0
    if not sources:
        print("no documents stored yet", file=sys.stderr)
    for entry in sources:
        print(f"{entry['chunks']:>6}  {entry['kind'] or '?':<10}  {entry['source']}  ({entry['title']})")
    return 0


def cmd_delete(store, settings, args) -> int:
    deleted = store.delete(args.source)
    if args.json:
        print(json.dumps({"source": args.source, "deleted": deleted}))
    if not deleted:
        print(f"error: no source named {args.source!r} (see python -m loaders list)", file=sys.stderr)
        return 1
    if not args.json:
        print(f"deleted {args.source}: {deleted} chunks")
    return 0


def cmd_push(store, settings, args) -> int:
    from tqdm import tqdm

    from loaders.edge import EdgeVectorStore
    from loaders.transfer import push

    if not isinstance(store.vector_store, EdgeVectorStore):
        print("error: push copies the embedded store; CHATAPP_QDRANT_URL already points at a server", file=sys.stderr)
        return 2
    collection = args.collection or settings.collection
    with tqdm(total=store.count(), unit="chunk", file=sys.stderr, dynamic_ncols=True) as bar:
        def progress(fraction: float, message: str) -> None:
            bar.n = round(fraction * bar.total)
            bar.refresh()

        try:
            pushed, failure = push(store.vector_store, args.url, collection,
                                   api_key=args.api_key or settings.qdrant_api_key, progress=progress), None
        except Exception as err:  # unreachable server, refused key: one line, after the bar closes
            pushed, failure = 0, f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
    if failure:
        print(f"error: cannot push to {args.url}: {failure}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"pushed": pushed, "url": args.url, "collection": collection}))
    else:
        print(f"pushed {pushed} chunks to {args.url} ({collection}); use it with CHATAPP_QDRANT_URL={args.url}")
    return 0


def cmd_reindex(store, settings, args) -> int:
    from tqdm import tqdm

    with tqdm(total=store.vector_store.count(pending=None), unit="chunk", file=sys.stderr, dynamic_ncols=True) as bar:
        def progress(fraction: float, message: str) -> None:
            bar.n = round(fraction * bar.total)
            bar.refresh()

        done = store.reindex(progress)
    if args.json:
        print(json.dumps({"reindexed": done}))
    else:
        print(f"embedded {done} chunks again with {settings.embedding_model}")
    return 0


COMMANDS = {"ingest": cmd_ingest, "search": cmd_search, "list": cmd_list, "delete": cmd_delete, "push": cmd_push,
            "reindex": cmd_reindex}
