"""The Qdrant store with the real embedder (all-MiniLM-L6-v2, ONNX int8) and embedded Qdrant on disk; the CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pypdf
import pytest

from chatapp.settings import Settings
from loaders.documents import context_header, indexed_text
from loaders.store import DocumentStore, StoreError, chunk_id, get_store, open_engine

ROOT = Path(__file__).resolve().parents[1]
PDF = "attention-is-all-you-need.pdf"


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings.from_env(data_dir=tmp_path_factory.mktemp("store") / "data")


@pytest.fixture(scope="module")
def store(settings, corpus):
    store = get_store(settings)
    results = store.ingest([corpus / "pdf" / PDF, corpus / "html" / "ars-1.html", corpus / "html" / "bbc-1.html",
                            corpus / "youtube" / "timedtext_sample.xml"])
    assert all(r.ok for r in results), [r.summary() for r in results]
    yield store
    store.close()


def test_one_store_per_process(store, settings):
    assert get_store(settings) is store
    with pytest.raises(StoreError, match="in use by another process"):
        open_engine(settings, store.embeddings)  # Qdrant Edge locks its folder: a second opener gets one line


def test_sources_listed_with_chunk_counts(store):
    sources = {e["source"]: e for e in store.list_sources()}
    assert set(sources) == {PDF, "ars-1.html", "bbc-1.html", "timedtext_sample.xml"}
    assert sources[PDF]["kind"] == "pdf" and sources["ars-1.html"]["kind"] == "html"
    assert sources["ars-1.html"]["title"].startswith("Just-released Minecraft exploit")
    assert sum(e["chunks"] for e in sources.values()) == store.count()
    assert sources[PDF]["chunks"] > 15  # more chunks than pages


def test_search_finds_the_page_with_cosine_scores(store):
    hits = store.search("How does multi-head attention let the model attend to different subspaces?", k=4)
    assert len(hits) == 4
    doc, score = hits[0]
    assert doc.metadata["source"] == PDF and doc.metadata["page"] in (4, 5)  # section 3.2.2 of the paper
    scores = [s for _, s in hits]  # cosines, in the order the hybrid fusion ranks them
    assert all(-1.0 <= s <= 1.0 for s in scores)
    dense = [s for _, s in store.search("How does multi-head attention let the model attend to different subspaces?",
                                        k=4, hybrid=False)]
    assert dense == sorted(dense, reverse=True)
    query = np.array(store.embeddings.embed_query("How does multi-head attention let the model attend to "
                                                  "different subspaces?"))
    passage = np.array(store.embeddings.embed_documents([indexed_text(doc)])[0])  # the stored vector's text
    cosine = float(query @ passage / np.linalg.norm(query) / np.linalg.norm(passage))
    assert score == pytest.approx(cosine, abs=1e-4)
    minecraft = store.search("Minecraft server crash exploit", k=1)[0][0]
    assert minecraft.metadata["source"] == "ars-1.html"
    transcript = store.search("a test transcript that was made up", k=1)[0][0]
    assert transcript.metadata["source"] == "timedtext_sample.xml" and transcript.metadata["start"] == 0.0


def test_chunks_are_found_by_their_source_title_and_kind(settings, tmp_path):
    """Two notes whose text is the same but for a date: only the header, the file name as title, tells them
    apart, and the question names the document as people do."""
    for name, date in (("zebra-migration-notes.txt", "24 July 2015"), ("penguin-colony-notes.txt", "3 March 2019")):
        (tmp_path / name).write_text(f"Published {date}. The figures were checked twice.\n")
    scratch = get_store(Settings.from_env(data_dir=tmp_path / "titled"))
    try:
        assert all(r.ok for r in scratch.ingest([tmp_path / "zebra-migration-notes.txt",
                                                 tmp_path / "penguin-colony-notes.txt"]))
        for hybrid in (True, False):
            top = scratch.search("When were the penguin colony notes published?", k=1, hybrid=hybrid)[0][0]
            assert top.metadata["source"] == "penguin-colony-notes.txt" and "3 March 2019" in top.page_content
            assert top.page_content.startswith("Published")  # the header is searched, never shown
    finally:
        scratch.close()
    header = context_header({"title": "timedtext_sample", "source": "timedtext_sample.xml", "kind": "transcript"})
    assert header == "timedtext sample | video transcript"


def test_chunk_ids_are_deterministic(store):
    chunk = store.search("Obama gun control frustration", k=1)[0][0]
    meta = chunk.metadata
    assert chunk.id == chunk_id(meta["source"], meta["sha256"], meta["chunk"])


def test_chunks_yields_every_stored_chunk_as_a_document(store):
    chunks = list(store.chunks())
    assert len(chunks) == store.count() == len({doc.id for doc in chunks})
    per_source: dict[str, int] = {}
    for doc in chunks:
        per_source[doc.metadata["source"]] = per_source.get(doc.metadata["source"], 0) + 1
    assert per_source == {e["source"]: e["chunks"] for e in store.list_sources()}
    assert all(doc.page_content.strip() for doc in chunks)
    assert all(doc.id == chunk_id(doc.metadata["source"], doc.metadata["sha256"], doc.metadata["chunk"])
               for doc in chunks)
    assert any(doc.metadata.get("page") == 1 for doc in chunks if doc.metadata["source"] == PDF)


def test_reingest_unchanged_adds_nothing(store, corpus):
    before = store.count()
    results = store.ingest([corpus / "pdf" / PDF, corpus / "html"/ "ars-1.html"])
    assert [(r.ok, r.added) for r in results] == [(True, 0), (True, 0)]
    assert results[0].chunks > 0 and "unchanged" in results[0].summary()
    assert store.count() == before


def test_changed_source_replaces_its_chunks(store, corpus, tmp_path):
    page = tmp_path / "page.html"
    shutil.copy(corpus / "html" / "nytimes-1.html", page)
    first = store.ingest([page])[0]
    assert first.ok and first.added == first.chunks > 0
    assert store.search("Sudan trade sanctions lifted", k=1)[0][0].metadata["source"] == "page.html"
    shutil.copy(corpus / "html" / "daringfireball-1.html", page)  # same name, other bytes
    second = store.ingest([page])[0]
    assert second.ok and second.added == second.chunks
    listed = {e["source"]: e["chunks"] for e in store.list_sources()}
    assert listed["page.html"] == second.chunks
    texts = [d.page_content for d, _ in store.search("Sudan trade sanctions lifted", k=store.count())
             if d.metadata["source"] == "page.html"]
    assert texts and not any("Sudan" in t for t in texts)  # the old version is gone
    assert store.delete("page.html") == second.chunks


def test_reingest_with_another_chunk_size_leaves_no_stale_chunks(store, corpus):
    # same bytes, split smaller then larger again: the larger split's ids all exist from the smaller one
    source = corpus / "html" / "bbc-1.html"
    small = DocumentStore(store.vector_store, store.embeddings, chunk_size=400, chunk_overlap=50)
    smaller = small.ingest([source])[0]
    again = store.ingest([source])[0]
    assert smaller.added == smaller.chunks > again.chunks == again.added
    assert {e["source"]: e["chunks"] for e in store.list_sources()}["bbc-1.html"] == again.chunks
    assert store.ingest([source])[0].added == 0


def test_delete_a_source(store, corpus, tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("# Notes\n\nThe quarterly report is due on the third Friday of March.\n")
    assert store.ingest([notes])[0].added == 1
    before = store.count()
    assert store.delete("notes.md") == 1
    assert store.count() == before - 1
    assert "notes.md" not in {e["source"] for e in store.list_sources()}
    assert store.delete("notes.md") == 0


def test_bad_sources_report_one_line_and_store_nothing(store, corpus, tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("Qdrant keeps vectors; this line is the only text of a small good file.")
    (tmp_path / "empty.pdf").write_bytes(b"")
    writer = pypdf.PdfWriter(clone_from=corpus / "pdf" / PDF)
    writer.encrypt("s3cret")
    writer.write(tmp_path / "locked.pdf")
    data = (corpus / "pdf" / PDF).read_bytes()
    (tmp_path / "half.pdf").write_bytes(data[: len(data) // 2])
    before = store.count()
    seen = []
    results = store.ingest([tmp_path / "empty.pdf", tmp_path / "locked.pdf", good, tmp_path / "half.pdf",
                            tmp_path / "missing.json"], progress=lambda f, m: seen.append(f))
    by_name = {r.source: r for r in results}
    assert [r.source for r in results] == ["empty.pdf", "locked.pdf", "good.txt", "half.pdf", "missing.json"]
    assert by_name["good.txt"].ok and by_name["good.txt"].chunks == 1
    assert by_name["empty.pdf"].error == "empty file"
    assert by_name["locked.pdf"].error.startswith("encrypted PDF")
    assert by_name["half.pdf"].error.startswith("truncated or corrupt PDF")
    assert by_name["missing.json"].error == "no such file or folder"
    assert all("\n" not in (r.error or "") for r in results)
    assert store.count() == before + 1
    assert {e["source"] for e in store.list_sources()}.isdisjoint({"empty.pdf", "locked.pdf", "half.pdf"})
    assert seen == sorted(seen) and seen[-1] == 1.0  # the progress bar only moves forward, to the end
    store.delete("good.txt")


def test_retriever_is_a_langchain_retriever(store):
    docs = store.as_retriever(search_kwargs={"k": 2}).invoke("Obama interview with the BBC about Kenya")
    assert len(docs) == 2 and docs[0].metadata["source"] == "bbc-1.html"


def test_store_reopens_with_its_data(settings, corpus, tmp_path):
    """Everything survives a restart: a second process-lifetime opens the same folder and finds it."""
    reopened_settings = Settings.from_env(data_dir=tmp_path / "data")
    first = DocumentStore.from_settings(reopened_settings)
    first.ingest([corpus / "html" / "bbc-1.html"])
    count = first.count()
    first.close()
    second = DocumentStore.from_settings(reopened_settings)
    try:
        assert second.count() == count
        assert second.ingest([corpus / "html" / "bbc-1.html"])[0].added == 0
    finally:
        second.close()


# --- the command line ------------------------------------------------------------------------------------

def cli(*args, data_dir: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CHATAPP_DATA_DIR": str(data_dir), **(env or {})}
    return subprocess.run([sys.executable, "-m", "loaders", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_ingest_search_list_delete(corpus, tmp_path):
    data = tmp_path / "cli-data"
    (tmp_path / "empty.json").write_text("")
    done = cli("ingest", str(corpus / "pdf"), str(corpus / "youtube"), str(tmp_path / "empty.json"),
               str(tmp_path / "nope.pdf"), data_dir=data)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith(f"ok     {PDF}: ") and lines[0].endswith(" chunks")
    assert lines[1] == "ok     timedtext_sample.xml: 1 chunks"
    assert lines[2:] == ["FAILED empty.json: empty file", "FAILED nope.pdf: no such file or folder"]
    assert "Traceback" not in done.stderr and "2 of 4 sources stored" in done.stderr
    assert "%|" in done.stderr  # tqdm's bar

    again = cli("ingest", str(corpus / "pdf" / PDF), "--json", data_dir=data)
    assert again.returncode == 0
    assert json.loads(again.stdout)["added"] == 0

    found = cli("search", "What is scaled dot-product attention?", "BLEU score on WMT 2014", "--k", "3", "--json",
                data_dir=data)
    assert found.returncode == 0, found.stderr
    answers = [json.loads(line) for line in found.stdout.splitlines()]
    assert [a["query"] for a in answers] == ["What is scaled dot-product attention?", "BLEU score on WMT 2014"]
    for answer in answers:
        assert len(answer["hits"]) == 3
        assert set(answer["hits"][0]) == {"text", "source", "page", "score"}
        assert answer["hits"][0]["source"] == PDF and isinstance(answer["hits"][0]["page"], int)
    # the passages the chat would choose, not the store's order: its top 3 here are pp. 6, 3 and 4, while
    # the sentence "the inner-layer has dimensionality dff = 2048" is on p. 5
    chosen = cli("search", "How many units does the hidden layer of the per-token two-layer network have?",
                 "--k", "3", "--json", data_dir=data)
    assert 5 in [hit["page"] for hit in json.loads(chosen.stdout)["hits"]], chosen.stdout

    listed = cli("list", "--json", data_dir=data)
    entries = {e["source"]: e["chunks"] for e in json.loads(listed.stdout)}
    assert set(entries) == {PDF, "timedtext_sample.xml"} and entries["timedtext_sample.xml"] == 1

    gone = cli("delete", "timedtext_sample.xml", data_dir=data)
    assert gone.returncode == 0 and "deleted timedtext_sample.xml: 1 chunks" in gone.stdout
    missing = cli("delete", "timedtext_sample.xml", data_dir=data)
    assert missing.returncode == 1 and missing.stderr.strip().startswith("error: no source named")
    assert "Traceback" not in missing.stderr


def test_cli_help_and_locked_store(store, settings):
    shown = subprocess.run([sys.executable, "-m", "loaders", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert shown.returncode == 0 and "ingest" in shown.stdout and "CHATAPP_DATA_DIR" in shown.stdout
    busy = cli("list", data_dir=settings.data_dir)  # this test process holds the embedded store
    assert busy.returncode == 2
    assert busy.stderr.strip().startswith("error: the store") and "in use by another process" in busy.stderr
    assert "Traceback" not in busy.stderr


def test_add_documents_made_elsewhere(store):
    from langchain_core.documents import Document

    note = [Document(page_content="The staging server restarts every night at two.", metadata={"source": "ops-note"})]
    assert store.add(note) == 1
    assert store.add(note) == 0  # same text: nothing new
    changed = [Document(page_content="The staging server restarts every Sunday at four.", metadata={"source": "ops-note"})]
    assert store.add(changed) == 1
    hits = [d for d, _ in store.search("When does the staging server restart?", k=store.count())
            if d.metadata["source"] == "ops-note"]
    assert [d.page_content for d in hits] == [changed[0].page_content]
    assert store.delete("ops-note") == 1


def test_hybrid_search_finds_rare_words_that_dense_search_misses(store):
    question = "What value of label smoothing was used?"
    dense = [doc.page_content for doc, _ in store.search(question, k=4, hybrid=False)]
    hybrid = [doc.page_content for doc, _ in store.search(question, k=4)]
    assert not any("label smoothing of value" in text for text in dense)
    assert any("label smoothing of value" in text for text in hybrid)


def test_keyword_vectors_weigh_rare_and_repeated_terms():
    from loaders.sparse import BM25Sparse, term_index
    from loaders.terms import terms

    bm25 = BM25Sparse()
    query = bm25.embed_query("What value of label smoothing was used?")
    assert set(query.indices) == {term_index(t) for t in ("valu", "label", "smooth")} and set(query.values) == {1.0}
    once, twice = bm25.embed_documents(["label smoothing helps", "label smoothing, more label smoothing"])
    assert dict(zip(twice.indices, twice.values))[term_index("label")] > dict(zip(once.indices, once.values))[term_index("label")]
    assert terms("4,000 warmup_steps") == ["4000", "warmup", "step"]


@pytest.mark.parametrize("layout", ["current", "before-hybrid"])
def test_a_local_mode_store_moves_to_qdrant_edge_on_first_open(tmp_path, corpus, layout):
    """Stores that qdrant-client's local mode wrote under DATA/qdrant, as the previous version wrote them
    (dense + bm25 through langchain_qdrant) or as older ones did (dense only), are copied into Qdrant Edge
    on first open with progress: same ids, vectors and payloads, BM25 vectors added where missing."""
    from langchain_qdrant import QdrantVectorStore, RetrievalMode
    from qdrant_client import QdrantClient, models

    from loaders.documents import load, split
    from loaders.embeddings import SentenceEmbeddings
    from loaders.server import create_collection
    from loaders.sparse import BM25Sparse

    settings = Settings.from_env(data_dir=tmp_path / "old")
    embeddings = SentenceEmbeddings(settings.embedding_model, cache_dir=settings.models_dir)
    client = QdrantClient(path=str(settings.qdrant_path))
    chunks = split(load(corpus / "pdf" / PDF)) + split(load(corpus / "html" / "bbc-1.html"))
    ids = [chunk_id(c.metadata["source"], c.metadata["sha256"], c.metadata["chunk"]) for c in chunks]
    if layout == "current":
        create_collection(client, settings.collection, 384)
        QdrantVectorStore(client=client, collection_name=settings.collection, embedding=embeddings,
                          distance=models.Distance.DOT, sparse_embedding=BM25Sparse(), sparse_vector_name="bm25",
                          retrieval_mode=RetrievalMode.HYBRID).add_documents(chunks, ids=ids)
    else:
        client.create_collection(settings.collection,
                                 vectors_config=models.VectorParams(size=384, distance=models.Distance.DOT))
        QdrantVectorStore(client=client, collection_name=settings.collection, embedding=embeddings,
                          distance=models.Distance.DOT).add_documents(chunks, ids=ids)
    before = {str(p.id): p for p in client.scroll(settings.collection, limit=1000, with_vectors=True)[0]}
    client.close()

    seen = []
    store = DocumentStore.from_settings(settings, progress=lambda f, m: seen.append((f, m)))
    try:
        assert seen and seen[-1][0] == 1.0 and "Qdrant Edge" in seen[-1][1]
        assert store.count() == len(chunks)
        after = {p.id: p for p in store.vector_store.scroll(vectors=True)}
        assert set(after) == set(before) == set(ids)
        for key, old in before.items():
            vector = old.vector[""] if isinstance(old.vector, dict) else old.vector
            assert after[key].payload == old.payload
            assert after[key].dense == pytest.approx(vector, abs=1e-6)
            assert after[key].sparse and after[key].sparse[0]  # BM25 vectors for every chunk
        hits = store.search("What value of label smoothing was used?", k=4)
        assert any("label smoothing of value" in doc.page_content for doc, _ in hits)
        assert store.ingest([corpus / "pdf" / PDF])[0].added == 0  # the same chunks, not copies
    finally:
        store.close()
    assert (settings.qdrant_path / "collection" / settings.collection).is_dir()  # the old folder is left as it was
    reopened = DocumentStore.from_settings(settings, progress=lambda f, m: seen.append((f, m)))
    try:
        assert reopened.count() == len(chunks) and len(seen) == len([s for s in seen])  # no second migration
    finally:
        reopened.close()


# --- the two engines --------------------------------------------------------------------------------------

QUESTIONS = ["How does multi-head attention let the model attend to different subspaces?",
             "What value of label smoothing was used?", "BLEU score on WMT 2014 English-to-German",
             "Minecraft server crash exploit", "Obama interview with the BBC about Kenya", "positional encoding sine",
             "a test transcript that was made up", "dropout rate", "Who found the bug?", "gun control"]


def test_edge_and_the_server_path_give_the_same_top_k_and_push_copies_the_store(store, corpus, tmp_path):
    """The same sources in Qdrant Edge and through the server's code path (qdrant-client; its local mode
    stands in for a server: no Qdrant server binary installs from PyPI or Debian here) give the same
    top-k, hybrid and dense. `python -m loaders push` then copies the embedded store to a 'server' that
    answers the same again."""
    from qdrant_client import QdrantClient

    from loaders.server import ServerVectorStore

    sources = [corpus / "pdf" / PDF, corpus / "html" / "ars-1.html", corpus / "html" / "bbc-1.html",
               corpus / "youtube" / "timedtext_sample.xml"]
    settings = Settings.from_env(data_dir=tmp_path / "edge")
    embedded = DocumentStore.from_settings(settings)
    server = DocumentStore(ServerVectorStore(QdrantClient(path=str(tmp_path / "server")), "documents",
                                             store.embeddings), store.embeddings)

    def answers(target: DocumentStore) -> dict:
        return {(q, hybrid): [(doc.id, round(score, 4)) for doc, score in target.search(q, k=6, hybrid=hybrid)]
                for q in QUESTIONS for hybrid in (True, False)}

    try:
        for target in (embedded, server):
            assert all(r.ok for r in target.ingest(sources))
        assert embedded.count() == server.count() and embedded.list_sources() == server.list_sources()
        expected = answers(server)
        assert answers(embedded) == expected
        # a name the chat looks up when no candidate passage holds it: held by a stored chunk or by none
        words = {"Minecraft": True, "Obama": True, "Vaswani": True, "Everest": False, "Jupiter": False}
        assert {w: embedded.mentions(w) for w in words} == {w: server.mentions(w) for w in words} == words
        embedded.vector_store.build_index()  # HNSW at this size still answers exactly (below full_scan_threshold)
        assert answers(embedded) == expected
    finally:
        embedded.close()
        server.close()

    target = tmp_path / "pushed"
    pushed = cli("push", str(target), "--json", data_dir=settings.data_dir)
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["pushed"] > 0
    copy = DocumentStore(ServerVectorStore(QdrantClient(path=str(target)), "documents", store.embeddings),
                         store.embeddings)
    try:
        assert copy.count() == json.loads(pushed.stdout)["pushed"]
        assert answers(copy) == expected
    finally:
        copy.close()
    nowhere = cli("push", "http://127.0.0.1:9", data_dir=settings.data_dir)
    assert nowhere.returncode == 1 and nowhere.stderr.strip().splitlines()[-1].startswith("error: cannot push to")


def test_index_build_does_not_freeze_the_process_and_searches_answer_meanwhile(store, tmp_path):
    """EdgeShard.optimize() holds the GIL for its whole run, so the build runs in a child process on a copy:
    meanwhile this process keeps running threads and exact searches find each point's own vector."""
    import time

    from loaders.edge import EdgeVectorStore
    from loaders.layout import StoredPoint, payload

    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((20_000, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [str(uuid) for uuid in (__import__("uuid").UUID(int=i + 1) for i in range(len(vectors)))]
    engine = EdgeVectorStore(tmp_path / "big", store.embeddings, dimension=384)
    try:
        for start in range(0, len(vectors), 2000):
            engine.write([StoredPoint(ids[i], vectors[i].tolist(), payload("x" * 800, {"source": f"s{i % 7}"}),
                                      ([i % 97], [1.0])) for i in range(start, start + 2000)])
        build = engine.index_in_background(threshold=10_000)
        assert build is not None
        gaps, last, answered = [], time.monotonic(), 0
        while build.is_alive():
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            i = int(rng.integers(len(vectors)))
            assert engine.query(vectors[i].tolist(), k=1)[0].id == ids[i]
            answered += 1
            time.sleep(0.02)
        assert answered > 20 and max(gaps) < 1.0, (answered, max(gaps))
        assert engine.unindexed() == 0 and engine.count() == len(vectors)
        # The swapped-in shard walks int8 copies of the vectors and rescores on the float originals: each
        # point still finds itself, with its float score (an int8 score would be off by ~1e-3).
        for i in rng.choice(len(vectors), 50, replace=False):
            hit = engine.query(vectors[i].tolist(), k=1)[0]
            assert hit.id == ids[i] and abs(hit.score - float(vectors[i] @ vectors[i])) < 1e-5, (i, hit.score)
    finally:
        engine.close()
    reopened = EdgeVectorStore(tmp_path / "big", store.embeddings)
    try:
        assert reopened.count() == len(vectors)
    finally:
        reopened.close()


def test_a_store_refuses_another_embedding_model_until_reindexed_with_it(tmp_path):
    """A store searched with another model's vectors matched nothing, silently (same size) or with 'Vector
    dimension error: expected dim: 384, got 128'. It now refuses to open with one line naming the mend, and
    `python -m loaders reindex` embeds every chunk again with the new model, of any size."""
    import torch
    from sentence_transformers import SentenceTransformer, models

    from loaders.embeddings import model_path

    torch.manual_seed(0)  # a real model of another size: MiniLM's encoder with a 384 -> 128 projection
    other = tmp_path / "minilm-128"
    SentenceTransformer(modules=[models.Transformer(model_path("embedded")), models.Pooling(384, "mean"),
                                 models.Dense(384, 128), models.Normalize()]).save(str(other))
    data = tmp_path / "data"
    note = tmp_path / "ferry.txt"
    note.write_text("The harbour ferry leaves Pier 3 every forty minutes on Saturdays. Tickets cost four euros.")
    store = DocumentStore.from_settings(Settings.from_env(data_dir=data))
    try:
        assert store.ingest([note])[0].ok and store.embedder_agreement() > 0.99
    finally:
        store.close()

    with pytest.raises(StoreError, match=r"another embedding model .* `python -m loaders reindex` to embed its 1 chunks"):
        DocumentStore.from_settings(Settings.from_env(data_dir=data, embedding_model=str(other)))
    env = {"CHATAPP_EMBEDDING_MODEL": str(other)}
    refused = cli("list", data_dir=data, env=env)
    assert refused.returncode == 2 and "loaders reindex" in refused.stderr and "Traceback" not in refused.stderr

    done = cli("reindex", "--json", data_dir=data, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"reindexed": 1}
    found = cli("search", "When does the ferry go on Saturdays?", "--json", data_dir=data, env=env)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["hits"][0]["source"] == "ferry.txt"
    assert cli("list", data_dir=data).returncode == 2  # now the default model is the other one

    # a reindex killed between swapping the folders: the next open finds the old store again
    (data / "store" / "documents").rename(data / "store" / "documents.replaced")
    assert json.loads(cli("list", "--json", data_dir=data, env=env).stdout)[0]["source"] == "ferry.txt"
