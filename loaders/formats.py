"""Readers for office documents, spreadsheets, e-books and Markdown sections: each turns a source's bytes
into LangChain Documents through a well-kept parser (python-docx, python-pptx, openpyxl, the csv module,
ebooklib, markdown-it). loaders.documents owns the suffix table and calls these.

Where a format has places a reader can point at, the Document says so:
- `location`: the words a citation shows after the source name ("Sheet1, row 12", "slide 3", "chapter 2");
- `section`: the heading path of the text ("Setup > Install"), for Markdown, DOCX and EPUB;
- the numbers themselves: `sheet` and `row` (spreadsheet rows as the spreadsheet numbers them, the header
  being row 1), `slide` (from 1), `chapter` (from 1, in reading order).
"""
from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Callable, Iterator

import docx
import openpyxl
import pptx
from ebooklib import ITEM_DOCUMENT, epub
from langchain_core.documents import Document
from markdown_it import MarkdownIt

CSV_SNIFF_BYTES = 64 * 1024


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


def xlsx(data: bytes, name: str, base: dict) -> Iterator[Document]:
    """One Document per row of every sheet; the first non-empty row of a sheet is its header."""
    # read_only streams the sheet XML instead of building every cell; data_only gives formulas' cached values.
    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        title = (book.properties.title or "").strip() or Path(name).stem
        for sheet in book.worksheets:
            for number, header, values in table_rows(sheet.iter_rows(values_only=True)):
                yield Document(page_content=row_text(header, list(values)), metadata={
                    **base, "title": title, "sheet": sheet.title, "row": number,
                    "location": f"{sheet.title}, row {number}"})
    finally:
        book.close()


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


def docx_sections(data: bytes, name: str, base: dict) -> Iterator[Document]:
    """One Document per heading's section, paragraphs and tables in document order; `section` is the
    heading path ("Results > Table 2")."""
    document = docx.Document(io.BytesIO(data))
    # Word fills the core title only when the author types it in File > Info; most documents carry their
    # title as a "Title"-styled first paragraph instead.
    styled = next((p.text.strip() for p in document.paragraphs if _heading_level(p) == 0 and p.text.strip()), "")
    title = (document.core_properties.title or "").strip() or styled or Path(name).stem
    path: dict[int, str] = {}
    lines: list[str] = []

    def flush() -> Iterator[Document]:
        if any(line.strip() for line in lines):
            section = " > ".join(path[level] for level in sorted(path))
            yield Document(page_content="\n".join(lines).strip(),
                           metadata={**base, "title": title, **({"section": section, "location": section} if section else {})})
        lines.clear()

    for block in document.iter_inner_content():
        if isinstance(block, docx.table.Table):
            lines.extend(" | ".join(cell.text.strip() for cell in row.cells) for row in block.rows)
            continue
        level = _heading_level(block)
        if level is not None and block.text.strip():
            yield from flush()
            path = {k: v for k, v in path.items() if k < level}
            path[level] = block.text.strip()
        lines.append(block.text)
    yield from flush()


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
