"""Readers for office documents, spreadsheets, e-books, e-mail, RTF and Markdown sections: each turns a
source's bytes into LangChain Documents through a well-kept parser (python-docx, python-pptx, openpyxl, xlrd
for legacy .xls, odfpy for OpenDocument, the csv module, ebooklib, the email package, striprtf, markdown-it;
LibreOffice converts Word and PowerPoint 97–2003 files for the DOCX and PPTX readers).
loaders.documents owns the suffix table and calls these.

Where a format has places a reader can point at, the Document says so:
- `location`: the words a citation shows after the source name ("Sheet1, row 12", "slide 3", "chapter 2");
- `section`: the heading path of the text ("Setup > Install"), for Markdown, DOCX, ODT and EPUB;
- the numbers themselves: `sheet` and `row` (spreadsheet rows as the spreadsheet numbers them, the header
  being row 1), `slide` (from 1), `chapter` (from 1, in reading order).
"""
from __future__ import annotations

import csv
import email
import email.policy
import io
import itertools
import shutil
import struct
import subprocess
import tempfile
import warnings
from datetime import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import docx
import openpyxl
import pptx
import xlrd
from ebooklib import ITEM_DOCUMENT, epub
from langchain_core.documents import Document
from markdown_it import MarkdownIt
from odf import dc, draw
from odf import table as odftable
from odf import text as odftext
from odf.namespaces import DRAWNS, OFFICENS, PRESENTATIONNS, TABLENS, TEXTNS
from odf.opendocument import load as load_odf
from odf.teletype import extractText
from striprtf.striprtf import rtf_to_text

from loaders.documents import LoadError, clock, email_attachments, place

CSV_SNIFF_BYTES = 64 * 1024
# A spreadsheet's most rows and columns (Excel's and LibreOffice's): no ODF repeat count goes past them.
SHEET_MAX_ROWS, SHEET_MAX_COLUMNS = 1_048_576, 16_384
EMAIL_HEADERS = ("From", "To", "Cc", "Date", "Subject")


def row_text(header: list[str], values: list) -> str:
    """A row as 'column: value' lines, the way a person reads a record; cells without a header get 'column N'."""
    lines = []
    for index, value in enumerate(values):
        if value is None or not str(value).strip():
            continue
        name = header[index] if index < len(header) and header[index] else f"column {index + 1}"
        lines.append(f"{name}: {str(value).strip()}")
    return "\n".join(lines)


def _cells(values) -> list[str]:
    return ["" if v is None else str(v).strip() for v in values]


# --- spreadsheets ------------------------------------------------------------------------------------

def table_rows(rows) -> Iterator[tuple[int, list[str], list]]:
    """(row number as the file counts it, header, values) for each data row: empty rows are skipped and
    the first non-empty one is the header."""
    header: list[str] | None = None
    for number, values in enumerate(rows, start=1):
        cells = _cells(values)
        if not any(cells):
            continue
        if header is None:
            header = cells
            continue
        yield number, header, values


def sheet_rows(rows, sheet: str, base: dict, title: str) -> Iterator[Document]:
    """One Document per data row of a sheet (see table_rows), cited as "Sheet1, row 12"."""
    for number, header, values in table_rows(rows):
        yield Document(page_content=row_text(header, list(values)), metadata={
            **base, "title": title, "sheet": sheet, "row": number, "location": f"{sheet}, row {number}"})


def xlsx(data: bytes, name: str, base: dict) -> Iterator[Document]:
    """One Document per row of every sheet; the first non-empty row of a sheet is its header."""
    # read_only streams the sheet XML instead of building every cell; data_only gives formulas' cached values.
    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        title = (book.properties.title or "").strip() or Path(name).stem
        for sheet in book.worksheets:
            yield from sheet_rows(sheet.iter_rows(values_only=True), sheet.title, base, title)
    finally:
        book.close()


def _xls_value(cell, datemode: int):
    """A cell as a person reads it: xlrd gives every number, dates included, as a float."""
    if cell.ctype == xlrd.XL_CELL_DATE:
        moment = xlrd.xldate_as_datetime(cell.value, datemode)
        if cell.value < 1:  # a time of day alone: day 0 is no date
            return moment.time().isoformat()
        return moment.date().isoformat() if moment.time() == time() else moment.isoformat(sep=" ")
    if cell.ctype == xlrd.XL_CELL_NUMBER and cell.value.is_integer():
        return int(cell.value)
    if cell.ctype == xlrd.XL_CELL_BOOLEAN:
        return bool(cell.value)
    if cell.ctype == xlrd.XL_CELL_ERROR:
        return xlrd.error_text_from_code.get(cell.value, "")
    return cell.value


def xls(data: bytes, name: str, base: dict) -> Iterator[Document]:
    """Excel 97–2003 (.xls), read by xlrd: one Document per row of every sheet, as for XLSX."""
    if data.startswith(b"PK\x03\x04"):  # an XLSX named .xls, as some exports save them; Excel opens those too
        yield from xlsx(data, name, base)
        return
    try:  # xlrd writes its remarks on slightly odd files to stdout unless given somewhere else to write them
        book = xlrd.open_workbook(file_contents=data, logfile=io.StringIO())
    except (IndexError, struct.error):  # xlrd's words for records cut short
        raise LoadError(name, "truncated or damaged XLS file") from None
    for sheet in book.sheets():
        rows = ([_xls_value(cell, book.datemode) for cell in row] for row in sheet.get_rows())
        yield from sheet_rows(rows, sheet.name, base, Path(name).stem)


def csv_rows(data: bytes, name: str, base: dict, decode: Callable[[bytes, str], str]) -> Iterator[Document]:
    """One Document per row; the first row is the header. The delimiter is sniffed (comma, semicolon, tab)."""
    text = decode(data, name)
    try:
        dialect = csv.Sniffer().sniff(text[:CSV_SNIFF_BYTES], delimiters=",;\t|")
    except csv.Error:  # one column, or too little to tell: plain commas
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    for number, header, values in table_rows(reader):
        yield Document(page_content=row_text(header, values), metadata={
            **base, "title": Path(name).stem, "row": number, "location": f"row {number}"})


# --- slides and word-processor documents -------------------------------------------------------------

def _shape_text(shape) -> list[str]:
    if shape.has_text_frame:
        return [shape.text_frame.text]
    if getattr(shape, "has_table", False) and shape.has_table:
        return [" | ".join(cell.text for cell in row.cells) for row in shape.table.rows]
    if shape.shape_type == pptx.enum.shapes.MSO_SHAPE_TYPE.GROUP:
        return [text for inner in shape.shapes for text in _shape_text(inner)]
    return []


def pptx_slides(data: bytes, name: str, base: dict) -> Iterator[Document]:
    """One Document per slide: its title, text boxes, tables and speaker notes."""
    deck = pptx.Presentation(io.BytesIO(data))
    title = (deck.core_properties.title or "").strip() or Path(name).stem
    for number, slide in enumerate(deck.slides, start=1):
        parts = [text for shape in slide.shapes for text in _shape_text(shape)]
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            parts.append(slide.notes_slide.notes_text_frame.text)
        heading = slide.shapes.title.text.strip() if slide.shapes.title is not None else ""
        metadata = {**base, "title": title, "slide": number, "location": f"slide {number}"}
        if heading:
            metadata["section"] = heading
        yield Document(page_content="\n".join(p.strip() for p in parts if p.strip()), metadata=metadata)


def _heading_level(paragraph) -> int | None:
    style = paragraph.style.name if paragraph.style is not None else ""
    if style == "Title":
        return 0
    if style.startswith("Heading "):
        level = style.removeprefix("Heading ")
        return int(level) if level.isdigit() else None
    return None


def sections(blocks: Iterable[tuple[int | None, str]], base: dict, title: str) -> Iterator[Document]:
    """One Document per heading's section from (heading level or None, text) blocks in document order;
    `section` is the heading path ("Results > Table 2")."""
    path: dict[int, str] = {}
    lines: list[str] = []

    def flush() -> Iterator[Document]:
        if any(line.strip() for line in lines):
            section = " > ".join(path[level] for level in sorted(path))
            yield Document(page_content="\n".join(lines).strip(),
                           metadata={**base, "title": title, **({"section": section, "location": section} if section else {})})
        lines.clear()

    for level, line in blocks:
        if level is not None and line.strip():
            yield from flush()
            path = {k: v for k, v in path.items() if k < level}
            path[level] = line.strip()
        lines.append(line)
    yield from flush()


def docx_sections(data: bytes, name: str, base: dict) -> Iterator[Document]:
    """One Document per heading's section, paragraphs and tables in document order; `section` is the
    heading path ("Results > Table 2")."""
    document = docx.Document(io.BytesIO(data))
    # Word fills the core title only when the author types it in File > Info; most documents carry their
    # title as a "Title"-styled first paragraph instead.
    styled = next((p.text.strip() for p in document.paragraphs if _heading_level(p) == 0 and p.text.strip()), "")
    title = (document.core_properties.title or "").strip() or styled or Path(name).stem

    def blocks() -> Iterator[tuple[int | None, str]]:
        for block in document.iter_inner_content():
            if isinstance(block, docx.table.Table):
                yield from ((None, " | ".join(cell.text.strip() for cell in row.cells)) for row in block.rows)
            else:
                yield _heading_level(block), block.text

    yield from sections(blocks(), base, title)


# --- Word and PowerPoint 97–2003 ----------------------------------------------------------------------
# No maintained Python library reads the binary .doc and .ppt formats, and the old command-line readers fail
# on today's files (antiword refused a .doc that LibreOffice wrote, "text stream too small"; catppt printed
# nothing for a .ppt). LibreOffice reads them best; it converts to .docx/.pptx, and the readers above give the
# same sections and slide numbers. Its input filter is named, so a damaged file is refused instead of being
# taken for plain text.
LEGACY_OFFICE = {"doc": ("MS Word 97", "docx", docx_sections), "ppt": ("MS PowerPoint 97", "pptx", pptx_slides)}
LIBREOFFICE_TIMEOUT_S = 120  # ~1 s for a small file, ~3 s for a deck of 300 slides (measured)
LIBREOFFICE_PACKAGES = "libreoffice-writer-nogui libreoffice-impress-nogui"


def legacy_office(data: bytes, name: str, base: dict) -> Iterator[Document]:
    """A Word 97–2003 .doc or PowerPoint 97–2003 .ppt (kind in base), converted by LibreOffice, then read as
    DOCX sections or PPTX slides."""
    kind = base["kind"]
    if kind == "doc" and data.lstrip().startswith(b"{\\rtf"):  # Word and WordPad save RTF under .doc too
        yield from rtf(data, name, base)
        return
    input_filter, target, read = LEGACY_OFFICE[kind]
    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    if soffice is None:
        raise LoadError(name, f"reading .{kind} needs LibreOffice (Debian: apt-get install {LIBREOFFICE_PACKAGES}; "
                              f"`make run` installs them), or save it as .{target}")
    with tempfile.TemporaryDirectory(prefix="chatapp-office-") as tmp:
        source = Path(tmp, f"source.{kind}")
        source.write_bytes(data)
        # A profile of its own: LibreOffice lets one process at a time use a profile, and two reads may overlap.
        profile = Path(tmp, "profile").as_uri()
        command = [soffice, "--headless", "--norestore", f"-env:UserInstallation={profile}",
                   f"--infilter={input_filter}", "--convert-to", target, "--outdir", tmp, str(source)]
        try:
            subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=LIBREOFFICE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise LoadError(name, f"LibreOffice took over {LIBREOFFICE_TIMEOUT_S} s to read it") from None
        converted = Path(tmp, f"source.{target}")
        if not converted.exists():
            raise LoadError(name, f"not a {input_filter.removeprefix('MS ')}–2003 file that LibreOffice can read "
                                  "(damaged, encrypted, or another format renamed)")
        yield from read(converted.read_bytes(), name, base)


# --- OpenDocument (LibreOffice) ----------------------------------------------------------------------

ODF_TYPES = {"odt": "text", "ods": "spreadsheet", "odp": "presentation"}


def _odf(data: bytes, name: str, kind: str):
    """The document and its body (office:text, office:spreadsheet or office:presentation)."""
    document = load_odf(io.BytesIO(data))
    wanted = ODF_TYPES[kind]
    if not document.mimetype.startswith(f"application/vnd.oasis.opendocument.{wanted}"):
        raise LoadError(name, f"not an OpenDocument {wanted} file (its type is {document.mimetype or 'missing'})")
    return document, getattr(document, wanted)


def _odf_title(document, name: str) -> str:
    titles = document.meta.getElementsByType(dc.Title)
    return (extractText(titles[0]).strip() if titles else "") or Path(name).stem


def _elements(element, *qnames: tuple[str, str]) -> list:
    """The child elements of `element` (of the given qualified names, when any are given)."""
    return [child for child in element.childNodes
            if child.nodeType == child.ELEMENT_NODE and (not qnames or child.qname in qnames)]


def _paragraph_text(element) -> str:
    """The text of the paragraphs in a table cell or a slide's frame, a line each."""
    return "\n".join(extractText(p) for p in element.getElementsByType(odftext.P))


def _odt_blocks(element) -> Iterator[tuple[int | None, str]]:
    """(heading level or None, text) for the headings, paragraphs and table rows, in document order."""
    for child in _elements(element):
        if child.qname == (TEXTNS, "h"):
            yield int(child.getAttrNS(TEXTNS, "outline-level") or 1), extractText(child)
        elif child.qname == (TEXTNS, "p"):
            yield None, extractText(child)
        elif child.qname == (TABLENS, "table"):
            for row in child.getElementsByType(odftable.TableRow):
                cells = _elements(row, (TABLENS, "table-cell"), (TABLENS, "covered-table-cell"))
                yield None, " | ".join(_paragraph_text(cell).strip() for cell in cells)
        elif child.qname != (TEXTNS, "tracked-changes"):  # where the text a change deleted is kept
            yield from _odt_blocks(child)  # sections, lists and their items: their paragraphs, in order


def odt_sections(data: bytes, name: str, base: dict) -> Iterator[Document]:
    """OpenDocument text (LibreOffice Writer): one Document per heading's section, as for DOCX."""
    document, body = _odf(data, name, "odt")
    yield from sections(_odt_blocks(body), base, _odf_title(document, name))


def _unrepeated(runs: Iterable[tuple[object, int]], empty, limit: int) -> Iterator:
    """The values of ODF's (value, times repeated) runs of rows or cells, each run capped at `limit`. Empty
    runs are held back until a value follows them: LibreOffice ends a sheet with an empty row repeated to
    the millionth, and a row with an empty cell repeated to the last column, which are no data."""
    held = 0
    for value, times in runs:
        if not value:
            held = min(held + times, limit)
            continue
        yield from itertools.repeat(empty, held)
        held = 0
        yield from itertools.repeat(value, min(times, limit))


def _ods_cell(cell) -> str:
    if cell.getAttrNS(OFFICENS, "value-type") == "date":  # ISO, not the sheet's local way of writing dates
        return (cell.getAttrNS(OFFICENS, "date-value") or "").replace("T", " ")
    return _paragraph_text(cell)  # as the sheet shows it: "12.50 €", "45%"


def _ods_row(row) -> list[str]:
    cells = _elements(row, (TABLENS, "table-cell"), (TABLENS, "covered-table-cell"))
    runs = ((_ods_cell(cell).strip(), int(cell.getAttrNS(TABLENS, "number-columns-repeated") or 1)) for cell in cells)
    return list(_unrepeated(runs, "", SHEET_MAX_COLUMNS))


def ods(data: bytes, name: str, base: dict) -> Iterator[Document]:
    """OpenDocument spreadsheet (LibreOffice Calc): one Document per row of every sheet, as for XLSX."""
    document, body = _odf(data, name, "ods")
    title = _odf_title(document, name)
    for table in _elements(body, (TABLENS, "table")):
        # rows may sit in header-rows and row groups: getElementsByType finds them all, in order
        runs = ((_ods_row(row), int(row.getAttrNS(TABLENS, "number-rows-repeated") or 1))
                for row in table.getElementsByType(odftable.TableRow))
        yield from sheet_rows(_unrepeated(runs, [], SHEET_MAX_ROWS), table.getAttrNS(TABLENS, "name"), base, title)


def odp_slides(data: bytes, name: str, base: dict) -> Iterator[Document]:
    """OpenDocument presentation (LibreOffice Impress): one Document per slide, its notes included, as for PPTX."""
    document, body = _odf(data, name, "odp")
    title = _odf_title(document, name)
    for number, page in enumerate(_elements(body, (DRAWNS, "page")), start=1):
        parts = [extractText(p).strip() for p in page.getElementsByType(odftext.P)]  # notes are in the page too
        heading = next((_paragraph_text(frame).strip() for frame in page.getElementsByType(draw.Frame)
                        if frame.getAttrNS(PRESENTATIONNS, "class") == "title"), "")
        metadata = {**base, "title": title, "slide": number, "location": f"slide {number}"}
        if heading:
            metadata["section"] = heading
        yield Document(page_content="\n".join(p for p in parts if p), metadata=metadata)


# --- e-mail and RTF ----------------------------------------------------------------------------------

def email_message(data: bytes, name: str, base: dict, decode: Callable[[bytes, str], str],
                  attachment: Callable[[bytes, str], list[Document]]) -> Iterator[Document]:
    """An e-mail (.eml): one Document of its From, To, Cc, Date and Subject lines, its body (the plain-text
    part, else the HTML one through the project's HTML extractor) and its attachments' names; then the
    Documents of each attachment that `attachment(bytes, filename)` reads (a PDF, a DOCX, a spreadsheet),
    cited as "attachment report.pdf, p. 3". One that cannot be read is named with the reason."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    headers = [f"{field}: {message[field]}" for field in EMAIL_HEADERS if message[field]]
    if not headers:
        raise LoadError(name, f"not an e-mail message (none of the headers {', '.join(EMAIL_HEADERS)})")
    body = message.get_body(preferencelist=("plain", "html"))
    text = ""
    if body is not None:
        try:
            text = body.get_content()
        except LookupError:  # a charset Python does not know ("unknown-8bit", a typo): read it as a text file
            text = decode(body.get_payload(decode=True), name)
        if body.get_content_subtype() == "html":
            from loaders.html import extract  # trafilatura loads only for a message with no plain text

            text = extract(text, None, with_date=False)[1]
    parts = ["\n".join(headers), text.strip()]
    subject = str(message["Subject"] or "").strip()
    metadata = {**base, "title": subject or Path(name).stem}
    attachments, read = [], []
    for filename, payload in email_attachments(message):
        try:
            docs = attachment(payload, filename)
        except LoadError as err:
            attachments.append(f"{filename} [not read: {err.reason}]")
            continue
        attachments.append(filename)
        for doc in docs:  # cited by the e-mail's name and the place inside the attachment
            inner = place(doc.metadata, page=", p. {}", start=lambda s: f" at {clock(s)}")
            extra = {"section": doc.metadata["section"]} if doc.metadata.get("section") else {}
            extra["attachment"] = filename
            if doc.metadata.get("page"):  # the page picture of an attached PDF is drawn from the kept e-mail
                extra["attachment_page"] = doc.metadata["page"]
            read.append(Document(page_content=doc.page_content,
                                 metadata={**metadata, **extra, "location": f"attachment {inner}"}))
    if attachments:
        parts.append("Attachments: " + ", ".join(attachments))
    yield Document(page_content="\n\n".join(p for p in parts if p), metadata=metadata)
    yield from read


def rtf(data: bytes, name: str, base: dict) -> Iterator[Document]:
    """Rich Text (WordPad, TextEdit) as one Document of its plain text, read by striprtf."""
    # RTF is 7-bit ASCII with escapes for the rest (\'e9, \u8364), which striprtf decodes by the file's code
    # page; a stray 8-bit byte is most likely Windows-1252, and \bin data may hold any byte.
    source = data.decode("cp1252", errors="replace")
    if not source.lstrip().startswith("{\\rtf"):
        raise LoadError(name, "not an RTF file (it does not start with {\\rtf)")
    if not source.rstrip("\x00 \t\r\n").endswith("}"):  # the document is one {...} group, closed last
        raise LoadError(name, "truncated RTF file (it does not end with the closing brace)")
    yield Document(page_content=rtf_to_text(source, errors="replace"), metadata={**base, "title": Path(name).stem})


# --- e-books and Markdown ----------------------------------------------------------------------------

def epub_chapters(data: bytes, name: str, base: dict,
                  html: Callable[[bytes, str, dict], list[Document]]) -> Iterator[Document]:
    """One Document per chapter in reading (spine) order, its XHTML read by the project's HTML extractor."""
    with warnings.catch_warnings():  # ebooklib warns about its own future defaults on every read
        warnings.simplefilter("ignore")
        book = epub.read_epub(io.BytesIO(data), options={"ignore_ncx": True})
    titles = book.get_metadata("DC", "title")
    title = (titles[0][0].strip() if titles and titles[0][0] else "") or Path(name).stem
    number = 0
    for idref, _linear in book.spine:
        item = book.get_item_with_id(idref)
        # the navigation page (a table of contents) is in the spine too, and is no chapter
        if item is None or item.get_type() != ITEM_DOCUMENT or not item.is_chapter():
            continue
        for doc in html(item.get_content(), name, base):
            if not doc.page_content.strip():
                continue
            number += 1
            chapter = doc.metadata.get("title")
            doc.metadata.update(title=title, chapter=number, location=f"chapter {number}")
            if chapter and chapter != Path(name).stem:
                doc.metadata["section"] = chapter
            yield doc


def markdown_sections(text: str, base: dict, title: str) -> list[Document]:
    """The text cut before each heading, kept verbatim; each part carries its heading path as `section`.
    markdown-it (CommonMark) finds the headings, so a '#' line inside a code fence is no heading, and
    underlined (setext) headings count."""
    tokens = MarkdownIt("commonmark").parse(text)
    cuts = [(0, None, "")]  # (first line, level, heading text)
    for index, token in enumerate(tokens):
        if token.type == "heading_open" and token.map:
            cuts.append((token.map[0], int(token.tag[1]), tokens[index + 1].content.strip()))
    lines = text.splitlines(keepends=True)
    docs, path = [], {}
    for (start, level, heading), (end, _, _) in zip(cuts, cuts[1:] + [(len(lines), None, "")]):
        if level is not None:
            path = {k: v for k, v in path.items() if k < level}
            path[level] = heading
        part = "".join(lines[start:end])
        if not part.strip():
            continue
        section = " > ".join(path[k] for k in sorted(path) if path[k])
        metadata = {**base, "title": title}
        if section:
            metadata.update(section=section, location=section)
        docs.append(Document(page_content=part, metadata=metadata))
    return docs
