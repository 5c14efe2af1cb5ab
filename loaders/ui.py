"""The Documents tab: upload files or paste a YouTube URL, see the stored sources, delete one, try a search.

app.py calls build_documents_tab(store, settings) inside `with gr.Tab("Documents"):`. Everything shown
from documents goes through Textbox/Dataframe cells as plain text: an uploaded page's markup never runs.
"""
from __future__ import annotations

import os

import gradio as gr
from gradio.data_classes import FileData

from chatapp import evidence
from loaders.documents import SUPPORTED, is_url, place, source_key
from loaders.jobs import IngestJob, IngestJobs

COLUMNS = ["source", "kind", "title", "chunks"]
NOTHING_CHOSEN = "Choose files or paste a URL first."


def source_rows(store, entries: list[dict] | None = None) -> list[list]:
    entries = store.list_sources() if entries is None else entries
    return [[e["source"], e["kind"] or "", e["title"] or "", e["chunks"]] for e in entries]


def check_uploads(settings, files, url: str | None) -> tuple[list[str], list[str]]:
    """Split what the page sent into paths to store and one refusal line each for the rest."""
    refused: list[str] = []
    paths: list[str] = []
    limit = settings.max_upload_mb * 1024 * 1024
    for item in files or []:
        if isinstance(item, dict):  # the API endpoint's FileData
            path = item.get("path", "")
        else:
            path = item if isinstance(item, str) else getattr(item, "name", None) or getattr(item, "path", "")
        size = os.path.getsize(path) if os.path.exists(path) else 0
        if size > limit:
            refused.append(f"FAILED {source_key(path)}: {size / 2**20:.1f} MB is over the "
                           f"{settings.max_upload_mb} MB upload limit (CHATAPP_MAX_UPLOAD_MB)")
        else:
            paths.append(path)
    if url and url.strip():
        # Only web addresses: a server path typed here would let anyone with the page store (and then
        # read back through search) any file the server can read.
        if is_url(url.strip()):
            paths.append(url.strip())
        else:
            refused.append(f"FAILED {url.strip()[:80]}: only web addresses (http:// or https://) go in this field; "
                           "upload files instead")
    return paths, refused


def start_ingest(jobs: IngestJobs, settings, files, url: str | None, jq: str | None) -> IngestJob | None:
    """Start storing what the page sent, in the background; None when it sent nothing."""
    paths, refused = check_uploads(settings, files, url)
    if not paths and not refused:
        return None
    return jobs.start(paths, jq=(jq or "").strip() or None, refused=refused)


def search_text(store, query: str, k: int, candidates: int) -> str:
    """The passages the chat would choose for `query`, as text."""
    if not query or not query.strip():
        return ""
    hits = evidence.rerank(query.strip(), store.search(query.strip(), k=max(int(k), candidates)), int(k))
    if not hits:
        return "No documents stored yet."
    out = []
    for rank, (doc, score) in enumerate(hits, 1):
        where = place(doc.metadata, page=", page {}", start=lambda seconds: f", at {seconds:.0f} s")
        out.append(f"[{rank}] {where}  (similarity {score:.3f})\n{doc.page_content.strip()}")
    return "\n\n".join(out)


def build_documents_tab(store, settings) -> None:
    def choices(entries: list[dict] | None = None):
        return [e["source"] for e in (store.list_sources() if entries is None else entries)]

    def listing(**dropdown) -> tuple:
        """The table's rows and the delete dropdown's choices from one read of the store: listing the
        sources scrolls every chunk, so it is done once, not once for each."""
        entries = store.list_sources()
        return source_rows(store, entries), gr.update(choices=choices(entries), **dropdown)

    gr.Markdown("Add documents to search and chat with: PDF (scanned pages are read by OCR), HTML, Word (DOCX, DOC), "
                "PowerPoint (PPTX, PPT), Excel (XLSX, XLS), OpenDocument (ODT, ODS, ODP), RTF, e-mail (EML), CSV, EPUB, "
                "JSON/JSONL, transcripts (VTT, SRT, YouTube XML), text, Markdown and code, and pictures (PNG, JPEG, "
                "TIFF, HEIC: read by OCR). Files are stored as soon as they are dropped; a URL when you "
                "press Enter or the button. A file already stored under the same name is replaced when its content "
                "changed and left alone when it did not.")
    with gr.Row():
        with gr.Column(scale=1):
            files = gr.File(label=f"Files (up to {settings.max_upload_mb} MB each)", file_count="multiple",
                            file_types=SUPPORTED, elem_id="upload-files")
            url = gr.Textbox(label="YouTube URL (or a web page)", placeholder="https://www.youtube.com/watch?v=…",
                             elem_id="youtube-url")
            jq = gr.Textbox(label="jq expression for JSON (optional)", placeholder=".items[].text", elem_id="jq")
            ingest = gr.Button("Add to the store", variant="primary", elem_id="ingest-button")
            log = gr.Textbox(label="Ingest log", lines=6, max_lines=20, interactive=False, elem_id="ingest-log")
        with gr.Column(scale=1):
            table = gr.Dataframe(value=lambda: source_rows(store), headers=COLUMNS, datatype=["str", "str", "str", "number"],
                                 interactive=False, label="Stored sources", elem_id="sources-table", wrap=True,
                                 column_widths=["30%", "14%", "42%", "14%"])
            with gr.Row():
                target = gr.Dropdown(choices=choices(), label="Source to delete", allow_custom_value=True,
                                     elem_id="delete-source", scale=3)
                delete = gr.Button("Delete", variant="stop", elem_id="delete-button", scale=1)
                refresh = gr.Button("Refresh", elem_id="refresh-sources", scale=1)
            delete_log = gr.Textbox(label="", show_label=False, interactive=False, elem_id="delete-log")
    with gr.Accordion("Try a search", open=False):
        with gr.Row():
            query = gr.Textbox(label="Question", elem_id="search-query", scale=4)
            k = gr.Number(value=settings.top_k, precision=0, minimum=1, maximum=20, label="Passages",
                          elem_id="search-k", scale=1)
        search = gr.Button("Search", elem_id="search-button")
        found = gr.Textbox(label="Passages the chat would choose, best first: the sentences that best answer "
                                 "the question decide the order, not the similarity alone", lines=8, max_lines=30,
                           interactive=False, elem_id="search-results")

    jobs = IngestJobs(store)
    # This page's jobs: those it started since none of them was running, and those running when it opened;
    # and a note on sources an ingest left unfinished (the app was stopped mid-ingest).
    # "finished" is the count at page load, when the table was drawn: a job that ends before the first tick
    # still redraws it.
    shown = gr.State(lambda: {"jobs": [], "version": -1, "finished": jobs.finished, "note": ""})

    def unfinished_note() -> str:
        unfinished = store.interrupted()
        if not unfinished:
            return ""
        names = ", ".join(f"{source} ({chunks} chunks written)" for source, chunks in unfinished.items())
        return (f"Not stored: {names}: the app stopped while storing it. Drop it again to finish; "
                "the chunks written are kept.")

    def log_text(page) -> str:
        return "\n\n".join(part for part in (page["note"], jobs.text(page["jobs"])) if part)

    poll = gr.Timer(1.0, active=True)  # the first tick picks up jobs already running (a reload mid-ingest)

    def start(page, uploaded, link, expression):
        job = start_ingest(jobs, settings, uploaded, link, expression)
        if job is None:
            return NOTHING_CHOSEN, gr.skip(), gr.skip()
        running = set(jobs.running())
        if not any(i in running for i in page["jobs"]):
            page["jobs"] = []  # a new batch: the last one's lines make way
        page["jobs"].append(job.id)
        page["note"] = unfinished_note()  # a source dropped again is being stored now: no longer named
        return log_text(page), None, gr.Timer(active=True)

    def on_drop(page, uploaded, expression):
        return start(page, uploaded, None, expression)

    def on_button(page, uploaded, link, expression):
        return *start(page, uploaded, link, expression), ""

    def on_tick(page):
        opened = page["version"] == -1  # the page's first tick: its log is empty
        if opened:  # (a drop made before it is kept)
            page["jobs"] = sorted({*page["jobs"], *jobs.running()})
        version, finished = jobs.version, jobs.finished
        finished_since = finished != page["finished"]
        if opened or finished_since:
            page["note"] = unfinished_note()
        changed = version != page["version"] and bool(page["jobs"] or page["note"])
        page["version"], page["finished"] = version, finished
        return (log_text(page) if changed else gr.skip(),
                *(listing() if finished_since else (gr.skip(), gr.skip())),
                gr.skip() if jobs.running() else gr.Timer(active=False))

    def on_delete(source):
        if not source:
            return "Choose a source first.", source_rows(store), gr.update()
        removed = store.delete(source)
        message = f"Deleted {source}: {removed} chunks." if removed else f"No source named {source!r}."
        return message, *listing(value=None)

    def on_refresh():
        return listing()

    def upload(files: list[FileData], jq: str = "") -> str:
        """Store uploaded files and return the log once they are stored (for scripts; the page does not wait)."""
        job = start_ingest(jobs, settings, files, None, jq)
        if job is None:
            return NOTHING_CHOSEN
        job.done.wait()
        return job.text()

    # Dropped files are stored at once: a new user drops a PDF and goes straight to Chat, where a question
    # asked meanwhile waits for it (chatapp.rag); waiting for a button press stored nothing. The handlers
    # return at once (IngestJobs says why), so every drop is taken, and the timer draws the progress.
    files.upload(on_drop, [shown, files, jq], [log, files, poll], trigger_mode="multiple", api_name=False)
    ingest.click(on_button, [shown, files, url, jq], [log, files, poll, url], trigger_mode="multiple", api_name=False)
    url.submit(on_button, [shown, files, url, jq], [log, files, poll, url], trigger_mode="multiple", api_name=False)
    poll.tick(on_tick, shown, [log, table, target, poll], show_progress="hidden", api_name=False)
    # Named API endpoints (Gradio's "Use via API"): scripts and bench/soak.py store and search as the page does.
    gr.api(upload, api_name="upload")
    delete.click(on_delete, [target], [delete_log, table, target], concurrency_limit=1)
    refresh.click(on_refresh, None, [table, target], api_name="sources")

    def searched(question, count):
        return search_text(store, question, count or settings.top_k, settings.candidates)

    search.click(searched, [query, k], found, api_name="search")
    query.submit(searched, [query, k], found, api_name=False)


if __name__ == "__main__":  # a quick look at the tab alone: python -m loaders.ui
    from chatapp.settings import Settings
    from loaders.store import get_store

    settings = Settings.from_env()
    with gr.Blocks(title="Documents") as demo:
        with gr.Tab("Documents"):
            build_documents_tab(get_store(settings), settings)
    demo.queue().launch(server_name=settings.host, server_port=settings.port)
