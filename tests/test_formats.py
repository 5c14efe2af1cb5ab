"""DOCX, PPTX, XLSX, XLS, ODT, ODS, ODP, CSV, EPUB, e-mail, RTF, Markdown sections and scanned PDFs: real
files written by python-docx, python-pptx, openpyxl, xlwt, odfpy, ebooklib and the email package, and pages of
the attention paper rendered to images; loaded, stored in the real embedded store, searched, and cited with the
right place."""
from __future__ import annotations

import base64
import datetime
import http.server
import io
import re
import shutil
import subprocess
import threading
import time
from dataclasses import replace
from email.message import EmailMessage

import docx
import openpyxl
import pptx
import pypdfium2 as pdfium
import pytest
import xlwt
from conftest import highlighted_pixels
from PIL import Image
from ebooklib import epub
from odf import dc, draw, style
from odf import table as odftable
from odf import text as odftext
from odf import presentation as odfpresentation
from odf.namespaces import PRESENTATIONNS
from odf.opendocument import OpenDocumentPresentation, OpenDocumentSpreadsheet, OpenDocumentText

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


def make_xls(path):
    book = xlwt.Workbook()
    sheet = book.add_sheet("Ferries")
    day = xlwt.easyxf(num_format_str="YYYY-MM-DD")
    for number, (route, departures, fare, since) in enumerate([
            ("route", "departures", "fare", "since"),
            ("Harbour line", 30, 2.5, datetime.date(2019, 4, 1)),
            ("Island loop", 8, 4, datetime.date(2020, 6, 15)),
            ("Lighthouse shuttle", 12, 3.75, datetime.date(2021, 5, 3))]):  # row 4
        sheet.write(number, 0, route)
        sheet.write(number, 1, departures)
        sheet.write(number, 2, fare)
        if isinstance(since, datetime.date):
            sheet.write(number, 3, since, day)
        else:
            sheet.write(number, 3, since)
    book.save(str(path))


def make_odt(path):
    document = OpenDocumentText()
    document.meta.addElement(dc.Title(text="Harbour works plan"))
    document.text.addElement(odftext.P(text="Notes from the harbour board."))
    document.text.addElement(odftext.H(outlinelevel=1, text="Budget"))
    document.text.addElement(odftext.P(text="Repairing the north pier costs forty thousand crowns."))
    document.text.addElement(odftext.H(outlinelevel=2, text="Timing"))
    items = odftext.List()
    for words in ("Divers inspect the pilings in March.", "Masons start in April."):
        item = odftext.ListItem()
        item.addElement(odftext.P(text=words))
        items.addElement(item)
    document.text.addElement(items)
    document.save(str(path))


def make_ods(path):
    book = OpenDocumentSpreadsheet()
    sheet = odftable.Table(name="Berths")

    def row(*cells, repeated=None):
        element = odftable.TableRow(numberrowsrepeated=repeated) if repeated else odftable.TableRow()
        for cell in cells:
            element.addElement(cell)
        sheet.addElement(element)

    def words(value):
        cell = odftable.TableCell(valuetype="string")
        cell.addElement(odftext.P(text=value))
        return cell

    def day(iso, shown):
        cell = odftable.TableCell(valuetype="date", datevalue=iso)
        cell.addElement(odftext.P(text=shown))  # as the sheet shows it, in its locale
        return cell

    row(words("boat"), words("skipper"), words("berth"), words("arrived"))
    row(odftable.TableCell(numbercolumnsrepeated=4), repeated=3)  # rows 2-4 empty
    row(words("Saga"), odftable.TableCell(), words("B4"), day("2024-03-05", "05/03/24"))  # row 5, no skipper
    row(words("Marlin"), words("Ines"), words("C1"), odftable.TableCell(), odftable.TableCell(numbercolumnsrepeated=1020))
    # LibreOffice ends a sheet so: the empty rest of its million rows, a thousand empty cells each
    row(odftable.TableCell(numbercolumnsrepeated=1024), repeated=1_048_570)
    book.spreadsheet.addElement(sheet)
    book.save(str(path))


def make_odp(path):
    deck = OpenDocumentPresentation()
    layout = style.PageLayout(name="Screen")
    deck.automaticstyles.addElement(layout)
    master = style.MasterPage(name="Default", pagelayoutname=layout)
    deck.masterstyles.addElement(master)

    def frame(kind, words):
        element = draw.Frame(width="20cm", height="3cm", x="2cm", y="2cm")
        element.setAttrNS(PRESENTATIONNS, "class", kind)  # "title", "outline", "notes": what Impress writes
        box = draw.TextBox()
        box.addElement(odftext.P(text=words))
        element.addElement(box)
        return element

    for title, body, notes in [("Welcome aboard", "Safety briefing for new crew", ""),
                               ("Winter schedule", "The saffron ferry runs twice a day from November", "check the tide tables")]:
        page = draw.Page(masterpagename=master)
        page.addElement(frame("title", title))
        page.addElement(frame("outline", body))
        if notes:
            speaker = odfpresentation.Notes()
            speaker.addElement(frame("notes", notes))
            page.addElement(speaker)
        deck.presentation.addElement(page)
    deck.save(str(path))


def make_eml(path):
    message = EmailMessage()
    message["From"] = "Ada Lovelace <ada@example.org>"
    message["To"] = "crew@example.org"
    message["Date"] = "Tue, 05 Mar 2024 09:30:00 +0000"
    message["Subject"] = "New ferry timetable"
    message.set_content("Hello all,\nthe night ferry to Vesterø now leaves at 23:40.\nAda\n")
    message.add_alternative("<html><body><p>Hello all, the <b>night ferry</b> ...</p></body></html>", subtype="html")
    message.add_attachment(b"%PDF-1.4 not read", maintype="application", subtype="pdf", filename="timetable.pdf")
    message.add_attachment(b"pier,departures\nsouth,4\n", maintype="text", subtype="csv", filename="piers.csv")
    path.write_bytes(bytes(message))


# As WordPad writes it: a font table, then the text with \par between paragraphs.
WORDPAD_RTF = (r"{\rtf1\ansi\deff0 {\fonttbl {\f0 Times;}} \f0\fs24 The cargo ferry leaves at 08:15 from "
               r"pier 7.\par Second line, caf\'e9 on board.}")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("formats")
    make_docx(folder / "report.docx")
    make_pptx(folder / "offsite.pptx")
    make_xlsx(folder / "stock.xlsx")
    make_epub(folder / "harbour.epub")
    make_xls(folder / "ferries.xls")
    make_odt(folder / "works.odt")
    make_ods(folder / "berths.ods")
    make_odp(folder / "crew.odp")
    make_eml(folder / "timetable.eml")
    (folder / "cargo.rtf").write_text(WORDPAD_RTF)
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


def test_xls_rows_dates_and_whole_numbers_as_a_person_reads_them(files):
    docs = load(files / "ferries.xls")
    assert [d.metadata["row"] for d in docs] == [2, 3, 4]
    assert docs[-1].page_content == "route: Lighthouse shuttle\ndepartures: 12\nfare: 3.75\nsince: 2021-05-03"
    assert "fare: 4\n" in docs[1].page_content  # 4.0 as Excel shows it
    assert (docs[-1].metadata["kind"], docs[-1].metadata["sheet"]) == ("xls", "Ferries")
    assert where(docs[-1]) == "ferries.xls, Ferries, row 4"


def test_an_xlsx_named_xls_is_read_as_xlsx(tmp_path, files):
    (tmp_path / "export.xls").write_bytes((files / "stock.xlsx").read_bytes())
    docs = load(tmp_path / "export.xls")
    assert where(docs[10]) == "export.xls, Inventory, row 12" and "periwinkle sprocket" in docs[10].page_content


def test_odt_sections_by_heading_with_lists(files):
    docs = load(files / "works.odt")
    assert [d.metadata.get("section") for d in docs] == [None, "Budget", "Budget > Timing"]
    assert {d.metadata["title"] for d in docs} == {"Harbour works plan"}
    assert docs[1].page_content == "Budget\nRepairing the north pier costs forty thousand crowns."
    assert docs[2].page_content == "Timing\nDivers inspect the pilings in March.\nMasons start in April."
    assert where(docs[2]) == "works.odt, Budget > Timing"


def test_ods_rows_numbered_through_repeats_and_a_million_empty_rows_cost_nothing(files):
    started = time.monotonic()
    docs = load(files / "berths.ods")
    assert time.monotonic() - started < 5
    assert [(d.metadata["row"], d.page_content) for d in docs] == [
        (5, "boat: Saga\nberth: B4\narrived: 2024-03-05"),  # the three repeated empty rows counted; the date in ISO
        (6, "boat: Marlin\nskipper: Ines\nberth: C1")]
    assert where(docs[0]) == "berths.ods, Berths, row 5"


def test_odp_one_document_a_slide_with_notes(files):
    docs = load(files / "crew.odp")
    assert [d.metadata["slide"] for d in docs] == [1, 2]
    assert [d.metadata["section"] for d in docs] == ["Welcome aboard", "Winter schedule"]
    assert docs[1].page_content == ("Winter schedule\nThe saffron ferry runs twice a day from November\n"
                                    "check the tide tables")
    assert where(docs[1]) == "crew.odp, slide 2"


def test_email_headers_plain_body_and_attachments(files):
    doc, row = load(files / "timetable.eml")
    assert doc.page_content.startswith(
        "From: Ada Lovelace <ada@example.org>\nTo: crew@example.org\nDate: Tue, 05 Mar 2024 09:30:00 +0000\n"
        "Subject: New ferry timetable\n\nHello all,\nthe night ferry to Vesterø now leaves at 23:40.\nAda\n\n"
        "Attachments: timetable.pdf [not read: truncated or corrupt PDF")  # the plain part, not its HTML alternative
    assert doc.page_content.endswith("], piers.csv")  # a damaged attachment is named with its reason
    assert (doc.metadata["title"], doc.metadata["kind"], where(doc)) == ("New ferry timetable", "email", "timetable.eml")
    assert (row.page_content, where(row)) == ("pier: south\ndepartures: 4", "timetable.eml, attachment piers.csv, row 2")


def test_an_emails_pdf_and_docx_attachments_are_read_and_cited_inside_it(tmp_path, corpus):
    """Found comparing with RAGFlow, whose e-mail parser reads attachments: ours named them only, so a
    report sent as a PDF was not searchable. A picture (a signature's logo) is named, not read by OCR."""
    make_docx(tmp_path / "report.docx")
    message = EmailMessage()
    message["From"], message["Subject"] = "ada@example.org", "The paper and the report"
    message.set_content("Both attached.")
    message.add_attachment((corpus / "pdf" / "attention-is-all-you-need.pdf").read_bytes(), maintype="application",
                           subtype="pdf", filename="paper.pdf")
    message.add_attachment((tmp_path / "report.docx").read_bytes(), maintype="application", subtype="octet-stream",
                           filename="report.docx")
    message.add_attachment(b"\x89PNG\r\n\x1a\n", maintype="image", subtype="png", filename="logo.png")
    (tmp_path / "mail.eml").write_bytes(bytes(message))
    docs = load(tmp_path / "mail.eml")
    assert docs[0].page_content.endswith("Attachments: paper.pdf, report.docx, logo.png")
    assert [where(d) for d in docs[1:]] == [f"mail.eml, attachment paper.pdf, p. {n}" for n in range(1, 16)] + [
        "mail.eml, attachment report.docx", "mail.eml, attachment report.docx, Results",
        "mail.eml, attachment report.docx, Results > Risks"]
    assert {(d.metadata["kind"], d.metadata["title"]) for d in docs} == {("email", "The paper and the report")}

    store = get_store(Settings.from_env(data_dir=tmp_path / "data"))
    try:
        [result] = store.ingest([tmp_path / "mail.eml"])
        assert result.ok, result.summary()
        best = rag.retrieve(store, "What value of label smoothing was used?", k=3)
        assert ("mail.eml", "attachment paper.pdf, p. 8") in [(b.source, b.location) for b in best]
        # the attached PDF's page is drawn with the quote highlighted, from the e-mail kept whole
        passage = next(b for b in best if b.location == "attachment paper.pdf, p. 8")
        start = passage.text.index("label smoothing of value")
        quoted = replace(passage, quote_spans=[(start, passage.text.index("[36].", start) + 5)])
        shown = page_picture(store, quoted)
        assert "Page 8 of paper.pdf with the quote highlighted" in shown
        jpeg = base64.b64decode(re.search(r'src="data:image/jpeg;base64,([^"]+)"', shown).group(1))
        unmarked = base64.b64decode(re.search(r'base64,([^"]+)"', page_picture(store, passage)).group(1))
        assert highlighted_pixels(jpeg) > highlighted_pixels(unmarked) + 1000
        store.delete("mail.eml")
        assert page_picture(store, quoted) == ""  # its copy goes with it
    finally:
        store.close()


def test_an_html_only_email_is_read_by_the_html_extractor(tmp_path):
    message = EmailMessage()
    message["From"] = "harbour@example.org"
    message["Subject"] = ""
    message.set_content("<html><head><style>p {color: navy}</style></head><body><h1>Tide warning</h1>"
                        "<p>The spring tide reaches 4.2 metres on Friday; move small boats to the inner basin.</p>"
                        "</body></html>", subtype="html")
    (tmp_path / "tide.eml").write_bytes(bytes(message))
    [doc] = load(tmp_path / "tide.eml")
    assert doc.page_content.startswith("From: harbour@example.org\n\n")
    assert "spring tide reaches 4.2 metres on Friday" in doc.page_content
    assert "<p>" not in doc.page_content and "color: navy" not in doc.page_content
    assert doc.metadata["title"] == "tide"  # no subject: the file's name


def test_rtf_as_wordpad_writes_it(files):
    [doc] = load(files / "cargo.rtf")
    assert " ".join(doc.page_content.split()) == "The cargo ferry leaves at 08:15 from pier 7. Second line, café on board."
    assert (doc.metadata["kind"], doc.metadata["title"]) == ("rtf", "cargo")


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("photo.eml", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR binary", "not an e-mail message"),
    ("notes.eml", b"just some words\nand more words\n", "not an e-mail message"),
    ("letter.rtf", b"Dear Sir,\nthis is plain text.\n", r"not an RTF file \(it does not start with \{\\rtf\)"),
    ("sheet.ods", None, "not an OpenDocument spreadsheet file"),
])
def test_a_file_that_is_not_its_format_is_one_line(tmp_path, files, name, content, reason):
    if content is None:  # a text document renamed .ods
        content = (files / "works.odt").read_bytes()
    (tmp_path / name).write_bytes(content)
    with pytest.raises(LoadError, match=rf"^{re.escape(name)}: (cannot read \w+: )?{reason}"):
        load(tmp_path / name)


@pytest.mark.parametrize("suffix", [".docx", ".pptx", ".xlsx", ".epub", ".xls", ".odt", ".ods", ".odp", ".rtf"])
def test_a_damaged_office_file_is_one_line(tmp_path, files, suffix):
    source = next(files.glob(f"*{suffix}")).read_bytes()
    (tmp_path / f"broken{suffix}").write_bytes(source[: len(source) // 3])
    with pytest.raises(LoadError, match=rf"^broken\{suffix}: ") as info:
        load(tmp_path / f"broken{suffix}")
    assert "\n" not in str(info.value)


def test_stored_searched_and_cited_with_their_place(tmp_path, files):
    settings = Settings.from_env(data_dir=tmp_path / "data")
    store = get_store(settings)
    try:
        results = store.ingest([files])
        assert all(r.ok for r in results), [r.summary() for r in results]
        assert {r.source for r in results} == {"report.docx", "offsite.pptx", "stock.xlsx", "harbour.epub",
                                               "orders.csv", "guide.md", "ferries.xls", "works.odt", "berths.ods",
                                               "crew.odp", "timetable.eml", "cargo.rtf"}
        for question, source, location in [
                ("How many periwinkle sprockets are in the Osaka warehouse?", "stock.xlsx", "Inventory, row 12"),
                ("When does the tangerine dashboard ship?", "offsite.pptx", "slide 2"),
                ("Who rebuilt the jetty after the storm?", "harbour.epub", "chapter 2"),
                ("What is the main supply risk with copper coils?", "report.docx", "Results > Risks"),
                ("How many departures does the lighthouse shuttle have?", "ferries.xls", "Ferries, row 4"),
                ("How much does repairing the north pier cost?", "works.odt", "Budget"),
                ("Which berth is the boat Saga in?", "berths.ods", "Berths, row 5"),
                ("How often does the saffron ferry run in winter?", "crew.odp", "slide 2"),
                ("When does the night ferry to Vesterø leave?", "timetable.eml", ""),
                ("When does the cargo ferry leave pier 7?", "cargo.rtf", "")]:
            best = rag.retrieve(store, question, k=3)[0]
            assert (best.source, best.location) == (source, location), (question, best)
            assert best.to_json().get("location", "") == location
    finally:
        store.close()


def save_as_97_2003(path, suffix):
    """The file saved as Word or PowerPoint 97-2003 by LibreOffice (`make test` installs it), the way an old
    Office would have written it: no Python library writes these formats."""
    folder, soffice = path.parent, shutil.which("soffice")
    assert soffice, "LibreOffice is missing: `make office` (or `make test`) installs it"
    subprocess.run([soffice, "--headless", "--norestore", f"-env:UserInstallation={(folder / 'lo').as_uri()}",
                    "--convert-to", suffix.lstrip("."), "--outdir", str(folder), str(path)],
                   check=True, capture_output=True, timeout=120)
    return path.with_suffix(suffix)


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("legacy")
    make_docx(folder / "report.docx")
    make_pptx(folder / "offsite.pptx")
    for suffix in (".doc", ".ppt"):
        save_as_97_2003(next(folder.glob(f"*{suffix}x")), suffix)
    return folder


def test_word_97_doc_keeps_its_sections_and_powerpoint_97_ppt_its_slides(legacy):
    doc = load(legacy / "report.doc")
    assert [d.metadata.get("section") for d in doc] == [None, "Results", "Results > Risks"]
    assert [d.page_content for d in doc] == [d.page_content for d in load(legacy / "report.docx")]
    assert {(d.metadata["kind"], d.metadata["title"]) for d in doc} == {("doc", "Quarterly report")}
    assert where(doc[2]) == "report.doc, Results > Risks"
    ppt = load(legacy / "offsite.ppt")
    assert [(d.metadata["slide"], d.metadata["section"]) for d in ppt] == [(1, "Welcome"), (2, "Roadmap"), (3, "Questions")]
    assert "tangerine dashboard" in ppt[1].page_content and "beta users" in ppt[1].page_content
    assert where(ppt[1]) == "offsite.ppt, slide 2"


def test_a_doc_that_is_rtf_inside_is_read(tmp_path):
    (tmp_path / "cargo.doc").write_text(WORDPAD_RTF)  # what WordPad and old Word left under .doc
    [doc] = load(tmp_path / "cargo.doc")
    assert "cargo ferry leaves at 08:15" in doc.page_content and doc.metadata["kind"] == "doc"


@pytest.mark.parametrize(("name", "how"), [("broken.doc", "cut"), ("broken.ppt", "cut"), ("renamed.doc", "text"),
                                           ("renamed.ppt", "docx")])
def test_a_damaged_or_renamed_97_2003_file_is_one_line(tmp_path, legacy, name, how):
    original = legacy / ("report.doc" if name.endswith(".doc") else "offsite.ppt")
    content = {"cut": original.read_bytes()[: original.stat().st_size // 3], "text": b"just some words\n",
               "docx": (legacy / "report.docx").read_bytes()}[how]
    (tmp_path / name).write_bytes(content)
    program = "Word" if name.endswith(".doc") else "PowerPoint"
    with pytest.raises(LoadError, match=rf"^{re.escape(name)}: not a {program} 97–2003 file that LibreOffice can read"):
        load(tmp_path / name)


def test_without_libreoffice_a_doc_says_what_to_install(tmp_path, legacy, monkeypatch):
    monkeypatch.setenv("CHATAPP_READ_MEMORY_MB", "0")  # read here, where PATH is changed
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LoadError, match=r"^report\.doc: reading \.doc needs LibreOffice \(Debian: apt-get install "
                                        r"libreoffice-writer-nogui"):
        load(legacy / "report.doc")


def test_a_doc_is_stored_searched_and_cited_by_section(tmp_path, legacy):
    store = get_store(Settings.from_env(data_dir=tmp_path / "data"))
    try:
        results = store.ingest([legacy / "report.doc", legacy / "offsite.ppt"])
        assert all(r.ok for r in results), [r.summary() for r in results]
        best = rag.retrieve(store, "What is the main supply risk with copper coils?", k=3)[0]
        assert (best.source, best.location) == ("report.doc", "Results > Risks")
        best = rag.retrieve(store, "When does the tangerine dashboard ship?", k=3)[0]
        assert (best.source, best.location) == ("offsite.ppt", "slide 2")
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
    eighth.save(folder / "IMG_0420.HEIC", format="HEIF", quality=90)  # what an iPhone's camera saves
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


def test_an_iphone_heic_photo_is_read_by_ocr(pictures):
    [doc] = load(pictures / "IMG_0420.HEIC")
    assert doc.metadata["kind"] == "image" and "label smoothing of value" in " ".join(doc.page_content.split())


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
