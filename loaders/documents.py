"""Turning a source (file, folder, URL) into LangChain Documents, and splitting them into chunks.

Every Document carries: source (file name or URL: the key that replace and delete use), kind, title,
sha256 of the source's bytes, and where the format has one: page (PDF or multi-page TIFF, from 1), start/end (seconds,
transcripts), record (JSON/JSONL, from 0), and for the formats of loaders.formats a `location` in words
("Sheet1, row 12", "slide 3") and a `section` (heading path). A source that cannot be read raises LoadError, whose
message is one line naming the source and saying why; nothing is returned for it.
"""
from __future__ import annotations

import codecs
import hashlib
import html as htmllib
import itertools
import json
import os
import re
import sys
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import parse_qs, urlparse

from langchain_core.documents import Document

from loaders import ocr

KINDS = {
    ".pdf": "pdf",
    ".html": "html", ".htm": "html", ".xhtml": "html",
    ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".vtt": "transcript", ".srt": "transcript", ".xml": "transcript",
    ".txt": "text", ".md": "markdown", ".markdown": "markdown",
    ".docx": "docx", ".pptx": "pptx", ".xlsx": "xlsx", ".xlsm": "xlsx", ".csv": "csv", ".tsv": "csv",
    ".epub": "epub", ".doc": "doc", ".ppt": "ppt", ".pps": "ppt",
    ".xls": "xls", ".ods": "ods", ".odt": "odt", ".odp": "odp", ".rtf": "rtf", ".eml": "email",
    ".png": "image", ".jpg": "image", ".jpeg": "image", ".tif": "image", ".tiff": "image", ".webp": "image",
    ".bmp": "image", ".gif": "image", ".heic": "image", ".heif": "image",
    # Plain text under other names: markup people write documents in, logs, and code or configuration,
    # which is read only when named (see expand).
    ".rst": "text", ".adoc": "text", ".org": "text", ".tex": "text", ".log": "text", ".text": "text",
    **dict.fromkeys((".py", ".js", ".ts", ".java", ".c", ".h", ".cpp", ".hpp", ".cs", ".go", ".rs", ".rb",
                     ".php", ".swift", ".kt", ".r", ".sh", ".sql", ".css", ".yaml", ".yml", ".toml", ".ini", ".cfg"),
                    "code"),
}
FOLDER_SKIPS = {"image", "code"}  # kinds a folder walk leaves out; see expand
SUPPORTED = sorted(KINDS)
MAX_NAME = 200  # characters of a source's name; file systems allow 255 bytes, and it is shown in every citation
DEFAULT_MAX_SOURCE_MB = 64  # of text from one source; see max_source_chars
JSONL_MAX_LINE = 16 * 2**20  # bytes of one JSONL record: a "line" longer than this is no record
PDF_PROGRESS_PAGES = 50  # a text page takes ~15 ms: say so every 50 of them, and after every page read by OCR
URL_TIMEOUT_S = 15  # the issue allows 20 s for a URL with no network; leave room for the rest
Progress = Callable[[float, str], None]  # (fraction of this source read, message)
TRANSCRIPT_PASSAGE_CHARS = 600  # cues are a few words each: group them into passages of ~30 s of speech


class LoadError(Exception):
    """A source that cannot be loaded. str() is one line: 'SOURCE: reason'."""

    def __init__(self, source: str, reason: str):
        self.source, self.reason = source, " ".join(str(reason).split())
        super().__init__(f"{source}: {self.reason}")


def is_url(source: str | Path) -> bool:
    return isinstance(source, str) and source.split("://", 1)[0].lower() in ("http", "https")


def printable(text: str) -> str:
    """`text` with control characters (NUL, newlines, escape sequences) shown as '?': it goes into one-line
    messages, logs and the store's payloads."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def source_key(source: str | Path) -> str:
    """The name a source is stored under: a URL as given, a file by its name alone (no folders, so no '../'),
    control characters shown as '?', and at most MAX_NAME characters (the suffix kept)."""
    if is_url(source):
        return printable(str(source).strip())
    name = printable(Path(source).name)
    if len(name) > MAX_NAME:
        suffix = Path(name).suffix if len(Path(name).suffix) < 16 else ""
        name = name[: MAX_NAME - len(suffix) - 1] + "…" + suffix
    return name


def place(metadata: dict, *, page: str, start: Callable[[float], str], other: str = ", {}") -> str:
    """Where a stored chunk is, for people: its source, then `page` formatted with its PDF page, for a
    transcript passage `start(seconds)`, or `other` formatted with the reader's `location` ("Sheet1, row 12",
    "slide 3"). The wording is the caller's (the CLI and the tab word it differently)."""
    where = metadata.get("source", "?")
    if metadata.get("page"):
        return where + page.format(metadata["page"])
    if metadata.get("start") is not None:
        return where + start(metadata["start"])
    if metadata.get("location"):
        return where + other.format(metadata["location"])
    return where


def clock(seconds: float) -> str:
    """A transcript time as people read it: 5:03, or 1:02:03 past the hour."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def expand(sources: Iterable[str | Path]) -> list[str | Path]:
    """Folders walked (sorted; hidden files, unsupported types, pictures and code skipped); files and URLs
    kept as given. A folder's pictures are mostly figures, icons and logos that OCR would take seconds each
    to find nothing in, and its code is the tooling beside the documents: each is read when it is named
    (or dropped) itself."""
    out: list[str | Path] = []
    for source in sources:
        if is_url(source):
            out.append(str(source).strip())
            continue
        path = Path(source).expanduser()
        if _is_dir(path):
            for child in sorted(path.rglob("*")):
                rel = child.relative_to(path).parts
                if (child.is_file() and not any(p.startswith(".") for p in rel)
                        and KINDS.get(child.suffix.lower(), "image") not in FOLDER_SKIPS):
                    out.append(child)
        else:
            out.append(path)
    return out


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long for the file system is no folder; load() gives it its one-line reason
        return False


def load(source: str | Path, *, jq: str | None = None, progress: Progress | None = None) -> list[Document]:
    """Load one file, folder or URL into Documents (a folder: all its supported files). `progress(fraction,
    message)` hears about long reads: a PDF's pages, and each page read by OCR."""
    if not is_url(source) and _is_dir(Path(source).expanduser()):
        return [doc for item in expand([source]) for doc in load(item, jq=jq, progress=progress)]
    if is_url(source):
        return _load_url(str(source).strip(), jq=jq)
    path = Path(source).expanduser()
    name = source_key(path)
    try:
        if not path.exists():  # also a name with a NUL byte, which no file system holds
            raise LoadError(printable(str(source)), "no such file or folder")
    except OSError as err:  # a name longer than the file system allows
        raise LoadError(name, f"cannot read: {err.strerror or err}") from None
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise LoadError(name, f"unsupported file type '{printable(path.suffix) or '(none)'}' (supported: {' '.join(SUPPORTED)})")
    return _read(path, name, kind=kind, suffix=path.suffix.lower(), jq=jq, progress=progress)


def load_bytes(data: bytes, name: str, *, kind: str, suffix: str = "", jq: str | None = None) -> list[Document]:
    """Load a source whose bytes are already in hand (an upload, a fetched URL): read from a temporary copy,
    so it gets the same memory ceiling as a file."""
    import tempfile

    name = name if is_url(name) else source_key(name)
    with tempfile.NamedTemporaryFile(suffix=".source") as tmp:
        tmp.write(data)
        tmp.flush()
        return _read(Path(tmp.name), name, kind=kind, suffix=suffix, jq=jq)


def _read(path: Path, name: str, *, kind: str, suffix: str, jq: str | None,
          progress: Progress | None = None) -> list[Document]:
    """read_file in the reader child (loaders.reader), whose memory is capped; in this process when the cap is 0."""
    from loaders import reader  # it imports this module in its child

    limit = reader.memory_mb()
    if not limit:
        return read_file(path, name, kind=kind, suffix=suffix, jq=jq, progress=progress)
    try:
        reply = reader.READER.run({"path": str(path), "name": name, "kind": kind, "suffix": suffix, "jq": jq},
                                  progress)
    except reader.ReaderDied:
        reply = {"memory": True}
    if reply.get("memory"):
        raise LoadError(name, f"reading it needs more than {limit} MB of memory (a decompression bomb?); "
                              "CHATAPP_READ_MEMORY_MB sets the limit")
    if "error" in reply:
        raise LoadError(name, reply["error"])
    return [Document(page_content=text, metadata=metadata) for text, metadata in reply["docs"]]


def max_source_chars() -> int:
    """The most text one source may give (CHATAPP_MAX_SOURCE_MB, default 64): ~64k chunks, a quarter of an hour
    of embedding on two cores. It bounds the memory an ingest holds for one source."""
    return int(float(os.environ.get("CHATAPP_MAX_SOURCE_MB", DEFAULT_MAX_SOURCE_MB)) * 2**20)


def _too_much_text(name: str) -> LoadError:
    return LoadError(name, f"more than {max_source_chars() / 2**20:g} MB of text: split it into smaller files, "
                           "or raise CHATAPP_MAX_SOURCE_MB")


def read_file(path: Path, name: str, *, kind: str, suffix: str = "", jq: str | None = None,
              progress: Progress | None = None) -> list[Document]:
    """Read a file's Documents in this process (the reader child runs this). JSONL is streamed a line at a
    time; other formats need their whole file (a PDF's cross-reference table is at its end, a DOCX is a zip)."""
    if kind == "jsonl":
        return _jsonl(path, name, jq=jq)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise LoadError(name, f"cannot read: {err.strerror or err}") from None
    return parse(data, name, kind=kind, suffix=suffix, jq=jq, progress=progress)


def parse(data: bytes, name: str, *, kind: str, suffix: str = "", jq: str | None = None,
          progress: Progress | None = None) -> list[Document]:
    """Documents from a source's bytes, in this process."""
    if not data.strip():
        raise LoadError(name, "empty file")
    base = {"source": name, "kind": kind, "sha256": hashlib.sha256(data).hexdigest()}
    # Here, not at the top: the office/e-book parsers cost ~0.3 s of import that most starts never need.
    from loaders import formats

    def read() -> list[Document]:
        if kind == "pdf":
            return _pdf(data, name, base, progress)
        if kind == "image":
            return _picture(data, name, base, progress)
        if kind == "html":
            return _html(data, name, base)
        if kind == "json":
            return _json(data, name, base, jq=jq)
        if kind == "jsonl":
            return _json_lines(data.splitlines(keepends=True), name, base, jq=jq)
        if kind == "transcript":
            return _transcript_file(data, name, base, suffix)
        readers = {"docx": formats.docx_sections, "pptx": formats.pptx_slides, "xlsx": formats.xlsx, "xls": formats.xls,
                   "ods": formats.ods, "odt": formats.odt_sections, "odp": formats.odp_slides, "rtf": formats.rtf,
                   "doc": formats.legacy_office, "ppt": formats.legacy_office}
        if kind in readers:
            return list(readers[kind](data, name, base))
        if kind == "csv":
            return list(formats.csv_rows(data, name, base, _decode))
        if kind == "email":
            return list(formats.email_message(data, name, base, _decode, _attachment))
        if kind == "epub":
            return list(formats.epub_chapters(data, name, base, _html))
        return _text(data, name, base)

    docs = _guarded(name, kind, read)
    return _kept(docs, name)


def _guarded(name: str, kind: str, read: Callable[[], list[Document]]) -> list[Document]:
    """read(), with any library's error turned into a one-line LoadError (MemoryError is the reader's to report)."""
    try:
        return read()
    except (LoadError, MemoryError):
        raise
    except RecursionError:
        raise LoadError(name, f"nested too deeply to read (more than ~{sys.getrecursionlimit()} levels)") from None
    except Exception as err:  # a library's own error for a damaged file: keep its words, drop the traceback
        raise LoadError(name, f"cannot read {kind}: {type(err).__name__}: {err}") from None


def _kept(docs: list[Document], name: str) -> list[Document]:
    docs = [d for d in docs if d.page_content.strip()]
    if not docs:
        raise LoadError(name, "no text found")
    if sum(len(d.page_content) for d in docs) > max_source_chars():
        raise _too_much_text(name)
    return docs


def split(docs: list[Document], chunk_size: int = 1000, chunk_overlap: int = 150) -> list[Document]:
    """Split into chunks with langchain-text-splitters; each chunk gets `chunk`, its index within its source."""
    from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

    plain = RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    # HTML arrives as Markdown (trafilatura), so headings are the first place to cut.
    markdown = RecursiveCharacterTextSplitter.from_language(
        Language.MARKDOWN, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    chunks: list[Document] = []
    counters: dict[str, int] = {}
    for doc in docs:
        splitter = markdown if doc.metadata.get("kind") in ("html", "markdown") else plain
        for chunk in splitter.split_documents([doc]):
            source = chunk.metadata.get("source", "")
            chunk.metadata["chunk"] = counters.get(source, 0)
            counters[source] = chunk.metadata["chunk"] + 1
            chunks.append(chunk)
    return chunks


KIND_WORDS = {"pdf": "document", "html": "web page", "transcript": "video transcript", "json": "record",
              "jsonl": "record", "markdown": "document", "text": "document", "docx": "document",
              "pptx": "slides", "xlsx": "spreadsheet", "csv": "spreadsheet", "epub": "book", "image": "picture",
              "code": "code", "xls": "spreadsheet", "ods": "spreadsheet", "odt": "document", "odp": "slides",
              "rtf": "document", "email": "email", "doc": "document", "ppt": "slides"}


def context_header(metadata: dict) -> str:
    """The line searched with a chunk but not shown: its source's title, what kind of source it is, and
    its section. A chunk seldom names what its document is about ("Published 24 July 2015"; the
    paper's "our model"), while questions do ("when was the BBC article published?", "what did the
    narrator say?"): the header lets dense and BM25 search match them, as contextual chunk headers do."""
    title = str(metadata.get("title") or "")
    if title == Path(str(metadata.get("source") or "")).stem:
        title = re.sub(r"[_-]+", " ", title)  # a file name standing in for a title reads as words
    parts = [title, KIND_WORDS.get(str(metadata.get("kind") or ""), ""), str(metadata.get("section") or "")]
    return " | ".join(p.strip() for p in parts if p and p.strip())


def indexed_text(chunk: Document) -> str:
    """What dense and BM25 search index for a chunk: its context header, then its text."""
    header = context_header(chunk.metadata or {})
    return f"{header}\n{chunk.page_content}" if header else chunk.page_content


# --- formats -------------------------------------------------------------------------------------

PDFIUM_LOCK = threading.Lock()  # PDFium is not thread-safe, not even across documents (pypdfium2's docs)
# Dropped from PDFium's page text: carriage returns (CRLF lines) and the other control characters, which
# PDFium gives for glyphs its font maps to no character (the paper's "ε" in "εls = 0.1" is "\x0f") and a
# browser draws as a box. loaders.pages drops the same ones to find a quote on its page.
PDFIUM_DROPPED = frozenset(chr(c) for c in range(32) if chr(c) not in "\t\n\x02")
_PDFIUM_TEXT = str.maketrans({**dict.fromkeys(PDFIUM_DROPPED), "\x02": "-", "\ufffe": "-"})  # hyphens at line ends


def _pdf(data: bytes, name: str, base: dict, progress: Progress | None = None) -> list[Document]:
    # PDFium (pypdfium2) rather than pypdf: 0.22 s against 1.3 s for the 15-page corpus paper, cleaner
    # text (no ligature glyphs), and it recovers a damaged cross-reference table as viewers do.
    import pypdfium2 as pdfium

    if not data.lstrip()[:5].startswith(b"%PDF"):
        raise LoadError(name, "not a PDF (the file does not start with %PDF)")
    with PDFIUM_LOCK:
        try:
            document = pdfium.PdfDocument(data)  # owner-password-only PDFs open, as in any viewer
        except pdfium.PdfiumError as err:
            if "password" in str(err).lower():
                raise LoadError(name, "encrypted PDF (it needs a password); save an unencrypted copy and retry") from None
            reason = str(err).replace("Failed to load document ", "").strip(" .()")
            raise LoadError(name, f"truncated or corrupt PDF ({reason})") from None
    pages, ocr_failed = [], None
    try:
        with PDFIUM_LOCK:
            title = document.get_metadata_dict().get("Title") or Path(name).stem
            count = len(document)
        for index in range(count):
            # The lock is taken a page at a time and OCR runs outside it: the chat's page pictures
            # (loaders.pages) need PDFium too, and tesseract takes seconds a page.
            with PDFIUM_LOCK:
                page = document[index]
                text_page = page.get_textpage()
                text = text_page.get_text_range().translate(_PDFIUM_TEXT)
                text_page.close()
                image = None
                if not text.strip():  # no text layer: a scan
                    try:
                        image = ocr.page_image(page)
                    except ocr.OCRError as err:
                        ocr_failed = f"page {index + 1}: {err}"
                page.close()
            if image is not None:
                try:
                    text = ocr.read(image)
                except ocr.OCRError as err:
                    ocr_failed = f"page {index + 1}: {err}"
            pages.append((text, image is not None))
            if progress and (image is not None or (index + 1) % PDF_PROGRESS_PAGES == 0 or index + 1 == count):
                progress((index + 1) / count, f"reading {name}: page {index + 1}/{count}"
                                              + (" by OCR" if image is not None else ""))
    except pdfium.PdfiumError as err:
        raise LoadError(name, f"truncated or corrupt PDF ({err})") from None
    finally:
        with PDFIUM_LOCK:
            document.close()  # here, under the lock, rather than by a finaliser in some other thread
    if not any(text.strip() for text, _ in pages):
        if ocr_failed:
            raise LoadError(name, f"PDF has no text layer and OCR failed: {ocr_failed}")
        raise LoadError(name, "PDF has no text, not even by OCR (blank pages?)")
    return [Document(page_content=text, metadata={**base, "title": str(title).strip(), "page": number,
                                                  **({"ocr": True} if by_ocr else {})})
            for number, (text, by_ocr) in enumerate(pages, start=1) if text.strip()]


def _picture(data: bytes, name: str, base: dict, progress: Progress | None = None) -> list[Document]:
    """A photo, screenshot or scan read by OCR: one Document per page of a multi-page TIFF, each with its
    page number (as a scanned PDF's), or one Document for a single picture."""
    from PIL import UnidentifiedImageError

    try:
        pages = list(ocr.picture_pages(data))
    except UnidentifiedImageError:
        raise LoadError(name, "not a picture that Pillow can read (damaged, or another format)") from None
    except OSError as err:  # Pillow's word for pixel data cut short or damaged
        raise LoadError(name, f"damaged picture ({err})") from None
    except ocr.OCRError as err:
        raise LoadError(name, f"cannot read the picture by OCR: {err}") from None
    texts = []
    for index, page in enumerate(pages):
        try:
            texts.append(ocr.read(page))
        except ocr.OCRError as err:
            raise LoadError(name, f"OCR failed{f' on page {index + 1}' if len(pages) > 1 else ''}: {err}") from None
        if progress:
            progress((index + 1) / len(pages), f"reading {name}" + (f": page {index + 1}/{len(pages)}" if len(pages) > 1 else "")
                     + " by OCR")
    if not any(text.strip() for text in texts):
        raise LoadError(name, "no text in the picture, not even by OCR")
    numbered = len(pages) > 1
    return [Document(page_content=text, metadata={**base, "title": Path(name).stem, "ocr": True,
                                                  **({"page": number} if numbered else {})})
            for number, text in enumerate(texts, start=1) if text.strip()]


def email_attachments(message: EmailMessage) -> Iterator[tuple[str, bytes]]:
    """A parsed e-mail's named attachments as (file name, bytes): what the e-mail reader reads
    (formats.email_message) and the chat's page picture draws from (pages.email_attachment)."""
    for part in message.iter_attachments():
        filename = part.get_filename()
        if filename:
            yield filename, part.get_payload(decode=True) or b""


def _attachment(data: bytes, filename: str) -> list[Document]:
    """An e-mail attachment's Documents, read by the reader its suffix names; none for a kind a folder walk
    skips (a signature's logo, a script) or another e-mail. LoadError when it cannot be read."""
    suffix = Path(filename).suffix.lower()
    kind = KINDS.get(suffix)
    if kind is None or kind in FOLDER_SKIPS or kind == "email":
        return []
    return parse(data, filename, kind=kind, suffix=suffix)


def _html(data: bytes, name: str, base: dict) -> list[Document]:
    from loaders.html import extract  # trafilatura and readability load only when a page does

    title, text = extract(data, name if is_url(name) else None, with_date=True)
    return [Document(page_content=text, metadata={**base, "title": title or Path(name).stem})]


def _decode(data: bytes, name: str) -> str:
    """Text from a file's bytes. A byte-order mark names UTF-16/32 (Notepad's "Unicode", Excel's "Unicode
    Text"); then UTF-8; then Windows-1252, which old Windows files are (its curly quotes and € are control
    characters in Latin-1); Latin-1 last, which never fails."""
    for mark, codec in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(mark):
            try:
                return data.decode(codec)
            except UnicodeDecodeError as err:
                raise LoadError(name, f"damaged {codec.upper()} text (byte {err.start})") from None
    if b"\x00" in data[:4096]:
        raise LoadError(name, "binary data, not text")
    for codec in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1")


def _text(data: bytes, name: str, base: dict) -> list[Document]:
    from loaders import formats  # here for start-up time, as in parse

    text = _decode(data, name)
    if base["kind"] != "markdown":
        return [Document(page_content=text, metadata={**base, "title": Path(name).stem})]
    docs = formats.markdown_sections(text, base, Path(name).stem)
    first = next((d.metadata["section"].split(" > ")[0] for d in docs if d.metadata.get("section")), None)
    for doc in docs:  # the first heading names the document, as before
        doc.metadata["title"] = first or Path(name).stem
    return docs


def _json_error(name: str, err: json.JSONDecodeError, line: int | None = None) -> LoadError:
    return LoadError(name, f"invalid JSON at line {line or err.lineno}, column {err.colno}: {err.msg}")


def record_text(record, prefix: str = "") -> str:
    """A record as readable text: one 'key: value' line per string field (nested keys joined with dots)."""
    if isinstance(record, str):
        return f"{prefix}: {record}" if prefix else record
    lines: list[str] = []
    if isinstance(record, dict):
        for key, value in record.items():
            inner = record_text(value, f"{prefix}.{key}" if prefix else str(key))
            if inner.strip():
                lines.append(inner)
    elif isinstance(record, list):
        if all(isinstance(v, str) for v in record):
            joined = ", ".join(v for v in record if v.strip())
            if joined:
                lines.append(f"{prefix}: {joined}" if prefix else joined)
        else:
            for i, value in enumerate(record):
                inner = record_text(value, f"{prefix}[{i}]")
                if inner.strip():
                    lines.append(inner)
    return "\n".join(lines)


def _json(data: bytes, name: str, base: dict, *, jq: str | None) -> list[Document]:
    program = _jq_program(name, jq) if jq else None
    try:
        parsed = json.loads(_decode(data, name))
    except json.JSONDecodeError as err:
        raise _json_error(name, err) from None
    if program is not None:
        return [Document(page_content=_jq_text(value), metadata={**base, "title": Path(name).stem, "record": index,
                                                                  "jq": jq})
                for index, value in enumerate(_jq_values(program, parsed, name, jq))] or _selected_nothing(name, jq)
    records = parsed if isinstance(parsed, list) else [parsed]
    return [_record(record, index, name, base) for index, record in enumerate(records)]


def _json_lines(lines: Iterable[bytes], name: str, base: dict, *, jq: str | None) -> list[Document]:
    """One Document a record (or, with `jq`, a selected value), a line at a time: the text is counted as it
    grows, so an endless file stops at the CHATAPP_MAX_SOURCE_MB limit rather than at the end of memory."""
    program = _jq_program(name, jq) if jq else None
    docs: list[Document] = []
    chars, records, limit = 0, 0, max_source_chars()
    for number, raw in enumerate(lines, start=1):
        line = _decode(raw, name)
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise _json_error(name, err, number) from None
        if program is not None:
            new = [Document(page_content=_jq_text(value), metadata={
                **base, "title": Path(name).stem, "record": len(docs) + i, "jq": jq})
                for i, value in enumerate(_jq_values(program, record, name, jq))]
        else:
            new = [_record(record, records, name, base)]
        records += 1
        docs += new
        chars += sum(len(d.page_content) for d in new)
        if chars > limit:
            raise _too_much_text(name)
    if not records:
        raise LoadError(name, "empty file")
    return docs or _selected_nothing(name, jq)


def _jsonl(path: Path, name: str, *, jq: str | None) -> list[Document]:
    """A JSONL file streamed: hashed in one pass (the hash goes in every Document), read in a second."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            for block in iter(lambda: file.read(2**20), b""):
                digest.update(block)
    except OSError as err:
        raise LoadError(name, f"cannot read: {err.strerror or err}") from None
    base = {"source": name, "kind": "jsonl", "sha256": digest.hexdigest()}

    def lines() -> Iterator[bytes]:
        with path.open("rb") as file:
            for number in itertools.count(1):
                line = file.readline(JSONL_MAX_LINE + 1)
                if not line:
                    return
                if len(line) > JSONL_MAX_LINE:
                    raise LoadError(name, f"line {number} is longer than {JSONL_MAX_LINE // 2**20} MB (not JSON Lines?)")
                yield line

    return _kept(_guarded(name, "jsonl", lambda: _json_lines(lines(), name, base, jq=jq)), name)


def _record(record, index: int, name: str, base: dict) -> Document:
    title = record.get("title") if isinstance(record, dict) else None
    return Document(page_content=record_text(record), metadata={
        **base, "title": title if isinstance(title, str) and title.strip() else Path(name).stem, "record": index})


def _jq_program(name: str, jq: str):
    """The user's jq expression, compiled by the jq library (the C jq's own parser)."""
    import jq as jqlib

    try:
        return jqlib.compile(jq)
    except ValueError as err:
        raise LoadError(name, f"invalid jq expression {jq!r}: {str(err).splitlines()[0]}") from None


def _jq_values(program, value, name: str, jq: str) -> list:
    try:
        return program.input_value(value).all()
    except ValueError as err:
        raise LoadError(name, f"jq expression {jq!r} failed: {str(err).splitlines()[0]}") from None


def _jq_text(value) -> str:
    """A selected value as text, as LangChain's JSONLoader made it (text_content=False): strings as they are,
    objects and arrays as JSON, null as nothing."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value) if value else ""
    return "" if value is None else str(value)


def _selected_nothing(name: str, jq: str | None):
    raise LoadError(name, f"jq expression {jq!r} selected nothing")


# --- transcripts -----------------------------------------------------------------------------------

@dataclass
class Cue:
    start: float
    end: float
    text: str


_TAG = re.compile(r"<[^>]+>")
_TIMING = re.compile(r"((?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})\s*-->\s*((?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})")


def _seconds(stamp: str) -> float:
    parts = stamp.replace(",", ".").split(":")
    return sum(float(p) * 60 ** i for i, p in enumerate(reversed(parts)))


def _clean(text: str) -> str:
    # Same treatment as youtube-transcript-api: entities decoded, then markup (<i>, <c>, <v ...>) dropped.
    return " ".join(_TAG.sub("", htmllib.unescape(text)).split())


def parse_cues(text: str) -> list[Cue]:
    """WebVTT and SRT cues. Hand-written: both are a timing line then text lines up to a blank line, and a
    dozen lines here beat two parser dependencies (youtube-transcript-api only writes these formats)."""
    cues: list[Cue] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _TIMING.search(lines[i])
        i += 1
        if not match:
            continue
        body = []
        while i < len(lines) and lines[i].strip():
            body.append(lines[i])
            i += 1
        cues.append(Cue(_seconds(match.group(1)), _seconds(match.group(2)), _clean(" ".join(body))))
    return cues


def parse_timedtext(data: bytes) -> list[Cue]:
    """YouTube's timed-text XML: <transcript><text start=".." dur="..">escaped text</text>..."""
    root = ET.fromstring(data)
    cues = []
    for el in root.iter("text"):
        start = float(el.get("start", 0))
        cues.append(Cue(start, start + float(el.get("dur", 0)), _clean("".join(el.itertext()))))
    return cues


def cue_passages(cues: list[Cue], base: dict, title: str) -> list[Document]:
    """Consecutive cues grouped into passages; each keeps the start and end time of its cues."""
    docs: list[Document] = []
    group: list[Cue] = []

    def flush():
        if group:
            docs.append(Document(page_content=" ".join(c.text for c in group), metadata={
                **base, "title": title, "start": round(group[0].start, 3), "end": round(group[-1].end, 3)}))
            group.clear()

    for cue in cues:
        if not cue.text:
            continue  # an empty cue (a pause) carries nothing to search
        if group and sum(len(c.text) + 1 for c in group) + len(cue.text) > TRANSCRIPT_PASSAGE_CHARS:
            flush()
        group.append(cue)
    flush()
    return docs


def _transcript_file(data: bytes, name: str, base: dict, suffix: str) -> list[Document]:
    if suffix == ".xml":
        try:
            cues = parse_timedtext(data)
        except ET.ParseError as err:
            raise LoadError(name, f"invalid XML: {err}") from None
        if not cues:
            raise LoadError(name, "not a YouTube timed-text transcript (no <text> cues)")
    else:
        cues = parse_cues(_decode(data, name))
        if not cues:
            raise LoadError(name, f"no subtitle cues found (not a {suffix[1:].upper()} file?)")
    return cue_passages(cues, base, Path(name).stem)


# --- URLs --------------------------------------------------------------------------------------------

def youtube_id(url: str) -> str | None:
    parts = urlparse(url)
    host = (parts.hostname or "").lower()
    if host == "youtu.be":
        return parts.path.strip("/").split("/")[0] or None
    if host.endswith("youtube.com") or host.endswith("youtube-nocookie.com"):
        if parts.path == "/watch":
            return (parse_qs(parts.query).get("v") or [None])[0]
        match = re.match(r"^/(?:embed|shorts|live|v)/([^/?#]+)", parts.path)
        return match.group(1) if match else None
    return None


def _with_deadline(fn: Callable, url: str, seconds: float = URL_TIMEOUT_S):
    """Run fn in a daemon thread and give up after `seconds`: requests' timeouts do not cover DNS look-ups."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as err:  # handed back to the caller's thread below
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise LoadError(url, f"no answer within {seconds:.0f} s (no network?)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _network_reason(err: Exception) -> str:
    text = str(err)
    if "NameResolution" in text or "Name or service not known" in text or "resolve" in text.lower():
        return "no network (the host name could not be resolved)"
    if "timed out" in text.lower() or "Timeout" in type(err).__name__:
        return "no network (the connection timed out)"
    return f"no network ({type(err).__name__})"


def _load_url(url: str, *, jq: str | None) -> list[Document]:
    import requests

    video = youtube_id(url)
    if video:
        return _youtube(url, video)

    def fetch():
        response = requests.get(url, timeout=(5, 10), headers={"User-Agent": "chatapp-loaders"})
        response.raise_for_status()
        return response.headers.get("content-type", ""), response.content

    try:
        content_type, data = _with_deadline(fetch, url)
    except requests.HTTPError as err:
        raise LoadError(url, f"the server answered {err.response.status_code}") from None
    except requests.RequestException as err:
        raise LoadError(url, _network_reason(err)) from None
    suffix = Path(urlparse(url).path).suffix.lower()
    kind = ("pdf" if "pdf" in content_type else "html" if "html" in content_type
            else "jsonl" if suffix == ".jsonl" else "json" if "json" in content_type
            else "image" if content_type.startswith("image/") else KINDS.get(suffix, "text"))
    return load_bytes(data, url, kind=kind, suffix=suffix, jq=jq)


def _youtube(url: str, video: str) -> list[Document]:
    import requests
    from youtube_transcript_api import YouTubeTranscriptApi
    from youtube_transcript_api._errors import CouldNotRetrieveTranscript

    class TimeoutSession(requests.Session):
        def request(self, *args, **kwargs):
            kwargs.setdefault("timeout", (5, 10))
            return super().request(*args, **kwargs)

    try:
        fetched = _with_deadline(lambda: YouTubeTranscriptApi(http_client=TimeoutSession()).fetch(video), url)
    except requests.RequestException as err:
        raise LoadError(url, _network_reason(err)) from None
    except CouldNotRetrieveTranscript as err:
        reason = str(err).strip().splitlines()
        raise LoadError(url, f"no transcript: {type(err).__name__}" + (f" ({reason[-1]})" if reason else "")) from None
    raw = [{"text": s.text, "start": s.start, "duration": s.duration} for s in fetched.snippets]
    base = {"source": url, "kind": "youtube", "video_id": video,
            "sha256": hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()}
    cues = [Cue(s["start"], s["start"] + s["duration"], _clean(s["text"])) for s in raw]
    docs = cue_passages(cues, base, f"YouTube {video}")
    if not docs:
        raise LoadError(url, "the transcript is empty")
    return docs
