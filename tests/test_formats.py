"""DOCX, PPTX, XLSX, CSV, EPUB, Markdown sections and scanned PDFs: real files written by python-docx,
python-pptx, openpyxl and ebooklib, and pages of the attention paper rendered to images; loaded, stored in the
real embedded store, searched, and cited with the right place."""
from __future__ import annotations

import base64
import http.server
import io
import re
import threading
import time

import docx
import openpyxl
import pptx
import pypdfium2 as pdfium
import pytest
from PIL import Image
from ebooklib import epub

from chatapp import rag
from chatapp.settings import Settings
from chatapp.ui import page_picture
from loaders import LoadError, load
from loaders.documents import place
from loaders.store import get_store


def make_docx(path):
    document = docx.Document()
    document.core_properties.title = "Quarterly report"
    document.add_paragraph("A short overview of the quarter.")
    document.add_heading("Results", 1)
    document.add_paragraph("Revenue grew by eleven percent, driven by the glacier-blue kettle.")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "region", "units"
    table.cell(1, 0).text, table.cell(1, 1).text = "Nordics", "4,210"
    document.add_heading("Risks", 2)
    document.add_paragraph("Supply of copper coils is the main risk.")
    document.save(path)


def make_pptx(path):
    deck = pptx.Presentation()
    for title, body, notes in [("Welcome", "Agenda for the offsite", ""),
                               ("Roadmap", "Ship the tangerine dashboard in March", "mention the beta users"),
                               ("Questions", "Ask anything", "")]:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
        if notes:
            slide.notes_slide.notes_text_frame.text = notes
    deck.save(path)


def make_xlsx(path):
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Inventory"
    sheet.append(["item", "warehouse", "count"])
    for n in range(2, 12):
        sheet.append([f"widget {n}", "Leeds", n * 10])
    sheet.append(["periwinkle sprocket", "Osaka", 77])  # row 12
    prices = book.create_sheet("Prices")
    prices.append(["item", "price"])
    prices.append(["periwinkle sprocket", "=3*4"])  # a formula: its cached value is absent in a fresh file
    prices.append(["widget 2", 5])
    book.save(path)


def make_epub(path):
    book = epub.EpubBook()
    book.set_identifier("chatapp-test-book")
    book.set_title("Tales of the Harbour")
    book.set_language("en")
    chapters = []
    for number, (heading, text) in enumerate([
            ("The Lighthouse", "The keeper lit the lamp every evening at dusk, and the ships came home."),
            ("The Storm", "A storm broke the jetty; the fishermen rebuilt it with oak from the hills.")], start=1):
        chapter = epub.EpubHtml(title=heading, file_name=f"chapter{number}.xhtml", lang="en")
        chapter.content = f"<html><head><title>{heading}</title></head><body><h1>{heading}</h1><p>{text}</p></body></html>"
        book.add_item(chapter)
        chapters.append(chapter)
    book.toc = chapters
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *chapters]
    epub.write_epub(str(path), book)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("formats")
    make_docx(folder / "report.docx")
    make_pptx(folder / "offsite.pptx")
    make_xlsx(folder / "stock.xlsx")
    make_epub(folder / "harbour.epub")
    (folder / "orders.csv").write_text("order;customer;city\n1001;Ada;Lyon\n1002;Grace;Porto\n\n1003;Linus;Turku\n")
    (folder / "guide.md").write_text("Intro before any heading.\n\n# Install\n\nRun make.\n\n```\n# a comment, no heading\n```\n\n"
                                     "## On Debian\n\nUse apt-get for tesseract.\n\nUsage\n-----\n\nAsk questions.\n")
    return folder


def where(doc) -> str:
    return place(doc.metadata, page=", p. {}", start=lambda s: f" @{s}")


def test_docx_sections_in_order_with_tables(files):
    docs = load(files / "report.docx")
    assert [d.metadata.get("section") for d in docs] == [None, "Results", "Results > Risks"]
    assert {d.metadata["title"] for d in docs} == {"Quarterly report"}
    assert "glacier-blue kettle" in docs[1].page_content and "Nordics | 4,210" in docs[1].page_content
    assert where(docs[2]) == "report.docx, Results > Risks"


def test_docx_without_a_core_title_takes_its_title_styled_paragraph(tmp_path):
    document = docx.Document()
    document.core_properties.title = ""
    document.add_heading("Ferry timetable plan", 0)  # level 0: the "Title" style
    document.add_paragraph("The ferry will run every 25 minutes on weekdays.")
    document.save(tmp_path / "plan.docx")
    assert {d.metadata["title"] for d in load(tmp_path / "plan.docx")} == {"Ferry timetable plan"}


def test_pptx_one_document_a_slide_with_notes(files):
    docs = load(files / "offsite.pptx")
    assert [d.metadata["slide"] for d in docs] == [1, 2, 3]
    assert [d.metadata["section"] for d in docs] == ["Welcome", "Roadmap", "Questions"]
    assert "tangerine dashboard" in docs[1].page_content and "beta users" in docs[1].page_content
    assert where(docs[1]) == "offsite.pptx, slide 2"


def test_xlsx_one_document_a_row_numbered_as_the_sheet_shows(files):
    docs = load(files / "stock.xlsx")
    inventory = [d for d in docs if d.metadata["sheet"] == "Inventory"]
    assert [d.metadata["row"] for d in inventory] == list(range(2, 13))
    last = inventory[-1]
    assert last.page_content == "item: periwinkle sprocket\nwarehouse: Osaka\ncount: 77"
    assert where(last) == "stock.xlsx, Inventory, row 12"
    prices = [d for d in docs if d.metadata["sheet"] == "Prices"]
    assert [d.metadata["location"] for d in prices] == ["Prices, row 2", "Prices, row 3"]


def test_csv_delimiter_sniffed_and_rows_numbered(files):
    docs = load(files / "orders.csv")
    assert [d.page_content for d in docs] == ["order: 1001\ncustomer: Ada\ncity: Lyon",
                                              "order: 1002\ncustomer: Grace\ncity: Porto",
                                              "order: 1003\ncustomer: Linus\ncity: Turku"]
    assert [d.metadata["row"] for d in docs] == [2, 3, 5]  # the blank line is row 4, as a spreadsheet shows it


def test_epub_chapters_in_reading_order(files):
    docs = load(files / "harbour.epub")
    assert [d.metadata["chapter"] for d in docs] == [1, 2]  # the navigation page is no chapter
    assert [d.metadata["section"] for d in docs] == ["The Lighthouse", "The Storm"]
    assert {d.metadata["title"] for d in docs} == {"Tales of the Harbour"}
    assert "oak from the hills" in docs[1].page_content
    assert where(docs[1]) == "harbour.epub, chapter 2"


def test_markdown_keeps_headings_as_sections(files):
    docs = load(files / "guide.md")
    assert [d.metadata.get("section") for d in docs] == [None, "Install", "Install > On Debian", "Install > Usage"]  # "Usage" is an underlined h2
    assert "# a comment, no heading" in docs[1].page_content  # a code fence is not cut
    assert "".join(d.page_content for d in docs) == (files / "guide.md").read_text()  # verbatim
    assert {d.metadata["title"] for d in docs} == {"Install"}


@pytest.mark.parametrize("suffix", [".docx", ".pptx", ".xlsx", ".epub"])
def test_a_damaged_office_file_is_one_line(tmp_path, files, suffix):
    source = next(files.glob(f"*{suffix}")).read_bytes()
    (tmp_path / f"broken{suffix}").write_bytes(source[: len(source) // 3])
    with pytest.raises(LoadError) as info:
        load(tmp_path / f"broken{suffix}")
    assert str(info.value).startswith(f"broken{suffix}: ") and "\n" not in str(info.value)


def test_stored_searched_and_cited_with_their_place(tmp_path, files):
    settings = Settings.from_env(data_dir=tmp_path / "data")
    store = get_store(settings)
    try:
        results = store.ingest([files])
        assert all(r.ok for r in results), [r.summary() for r in results]
        assert {r.source for r in results} == {"report.docx", "offsite.pptx", "stock.xlsx", "harbour.epub",
                                               "orders.csv", "guide.md"}
        for question, source, location in [
                ("How many periwinkle sprockets are in the Osaka warehouse?", "stock.xlsx", "Inventory, row 12"),
                ("When does the tangerine dashboard ship?", "offsite.pptx", "slide 2"),
                ("Who rebuilt the jetty after the storm?", "harbour.epub", "chapter 2"),
                ("What is the main supply risk with copper coils?", "report.docx", "Results > Risks")]:
            best = rag.retrieve(store, question, k=3)[0]
            assert (best.source, best.location) == (source, location), (question, best)
            assert best.to_json()["location"] == location
    finally:
        store.close()


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, corpus):
    """Pages 1 and 8 of the attention paper rendered to images and saved as an image-only PDF, with the
    paper's page 2 (text layer kept) between them: scan, text, scan."""
    folder = tmp_path_factory.mktemp("scan")
    paper = pdfium.PdfDocument(corpus / "pdf" / "attention-is-all-you-need.pdf")
    images = [paper[index].render(scale=200 / 72, grayscale=True).to_pil() for index in (0, 7)]
    images[0].save(folder / "images.pdf", save_all=True, append_images=images[1:], resolution=200)
    scans = pdfium.PdfDocument(folder / "images.pdf")
    mixed = pdfium.PdfDocument.new()
    mixed.import_pages(scans, [0])
    mixed.import_pages(paper, [1])
    mixed.import_pages(scans, [1])
    mixed.save(folder / "scanned.pdf")
    for document in (mixed, scans, paper):
        document.close()
    return folder / "scanned.pdf"


def test_scanned_pages_are_read_by_ocr_and_keep_their_numbers(scanned):
    started = time.monotonic()
    heard: list[tuple[float, str]] = []
    docs = load(scanned, progress=lambda fraction, message: heard.append((round(fraction, 2), message)))
    seconds = time.monotonic() - started
    print(f"OCR: {seconds / 2:.1f} s a scanned page (2 scanned, 1 with text)")
    assert [d.metadata["page"] for d in docs] == [1, 2, 3]
    assert [d.metadata.get("ocr", False) for d in docs] == [True, False, True]  # only pages without text
    assert "Attention Is All You Need" in docs[0].page_content
    assert "transduction problems such as language modeling" in docs[1].page_content  # page 2's own text layer
    assert "newstest2014" in docs[2].page_content and "BLEU" in docs[2].page_content  # Table 2, by OCR
    # the reader child tells of each page read by OCR as it goes (and of the last page)
    assert heard == [(0.33, "reading scanned.pdf: page 1/3 by OCR"), (1.0, "reading scanned.pdf: page 3/3 by OCR")]


def test_scanned_pdf_is_stored_searched_and_cited_by_page(tmp_path, scanned):
    store = get_store(Settings.from_env(data_dir=tmp_path / "data"))
    try:
        [result] = store.ingest([scanned])
        assert result.ok, result.summary()
        best = rag.retrieve(store, "Which BLEU scores did the Transformer reach on newstest2014?", k=3)[0]
        assert (best.source, best.location) == ("scanned.pdf", "p. 3")
    finally:
        store.close()


def test_blank_pdf_says_ocr_found_nothing(tmp_path):
    blank = pdfium.PdfDocument.new()
    blank.new_page(612, 792)
    blank.save(tmp_path / "blank.pdf")
    blank.close()
    with pytest.raises(LoadError, match=r"^blank.pdf: PDF has no text, not even by OCR"):
        load(tmp_path / "blank.pdf")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory, corpus):
    """The paper's pages 1 and 8 as a two-page TIFF (a scanner's output), and page 8 as a phone photo: a
    JPEG whose pixels lie sideways with the EXIF orientation that turns them upright."""
    folder = tmp_path_factory.mktemp("pictures")
    paper = pdfium.PdfDocument(corpus / "pdf" / "attention-is-all-you-need.pdf")
    first, eighth = (paper[index].render(scale=200 / 72, grayscale=True).to_pil() for index in (0, 7))
    paper.close()
    first.save(folder / "scan.tiff", save_all=True, append_images=[eighth], compression="tiff_deflate")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to show": how a phone held upright stores a photo
    eighth.transpose(Image.Transpose.ROTATE_90).save(folder / "photo.jpg", quality=85, exif=exif)
    return folder


def test_a_multi_page_tiff_is_read_by_ocr_page_by_page(pictures):
    heard: list[tuple[float, str]] = []
    docs = load(pictures / "scan.tiff", progress=lambda fraction, message: heard.append((round(fraction, 2), message)))
    assert [(d.metadata["page"], d.metadata["ocr"], d.metadata["kind"]) for d in docs] == [(1, True, "image"), (2, True, "image")]
    assert "Attention Is All You Need" in docs[0].page_content
    assert "label smoothing" in docs[1].page_content.replace("\n", " ")
    assert heard[-1] == (1.0, "reading scan.tiff: page 2/2 by OCR")


def test_a_sideways_phone_photo_is_turned_upright_before_ocr(pictures):
    [doc] = load(pictures / "photo.jpg")
    assert "page" not in doc.metadata  # one picture: nothing to number
    text = " ".join(doc.page_content.split())
    assert text.startswith("Table 2: The Transformer achieves") and "label smoothing of value" in text


def test_pictures_are_stored_searched_and_cited(tmp_path, pictures):
    store = get_store(Settings.from_env(data_dir=tmp_path / "data"))
    try:
        results = store.ingest([pictures / "scan.tiff", pictures / "photo.jpg"])
        assert all(r.ok for r in results), [r.summary() for r in results]
        sources = rag.retrieve(store, "What value of label smoothing was used?", k=3)
        assert {("scan.tiff", "p. 2"), ("photo.jpg", "")} <= {(s.source, s.location) for s in sources}
        for source in sources[:2]:  # the chat shows the picture the text was read from, upright
            shown = page_picture(store, source)
            assert "The picture this text was read from by OCR" in shown
            jpeg = base64.b64decode(re.search(r'src="data:image/jpeg;base64,([^"]+)"', shown).group(1))
            with Image.open(io.BytesIO(jpeg)) as picture:
                assert picture.width == 860 and picture.height > picture.width  # a portrait page, not sideways
        store.delete("photo.jpg")
        assert page_picture(store, next(s for s in sources if s.source == "photo.jpg")) == ""
    finally:
        store.close()


def test_a_damaged_or_blank_picture_is_one_line(tmp_path, pictures):
    (tmp_path / "cut.png").write_bytes((pictures / "photo.jpg").read_bytes()[:200])
    with pytest.raises(LoadError, match=r"^cut.png: damaged picture \(Truncated File Read\)$"):
        load(tmp_path / "cut.png")
    Image.new("L", (800, 600), 255).save(tmp_path / "white.png")
    with pytest.raises(LoadError, match=r"^white.png: no text in the picture, not even by OCR$"):
        load(tmp_path / "white.png")
    (tmp_path / "notes.png").write_text("not a picture at all")
    with pytest.raises(LoadError, match=r"^notes.png: not a picture that Pillow can read"):
        load(tmp_path / "notes.png")


def test_a_picture_url_is_read_by_its_content_type(pictures):
    """An address with no suffix ('/scan?id=8') is a picture when the server says image/jpeg."""
    photo = (pictures / "photo.jpg").read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(photo)))
            self.end_headers()
            self.wfile.write(photo)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/scan?id=8"
        [doc] = load(url)
        assert (doc.metadata["source"], doc.metadata["kind"]) == (url, "image")
        assert "label smoothing of value" in " ".join(doc.page_content.split())
    finally:
        server.shutdown()
