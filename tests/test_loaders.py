"""loaders.load on the real corpus files, and every bad input the issue lists (made from the real files)."""
from __future__ import annotations

import collections
import json
import random
import re
import time
from pathlib import Path

import pypdf
import pytest
from conftest import highlighted_pixels

from loaders import LoadError, expand, load, split
from loaders.documents import parse_cues, record_text

REFERENCES = Path(__file__).parent / "references" / "readability"


@pytest.fixture(scope="module")
def pdf_docs(corpus):
    return load(corpus / "pdf" / "attention-is-all-you-need.pdf")


def test_pdf_one_document_a_page_counted_from_one(pdf_docs, corpus):
    assert [d.metadata["page"] for d in pdf_docs] == list(range(1, 16))
    first, table_page = pdf_docs[0], pdf_docs[7]
    assert "Attention Is All You Need" in first.page_content
    assert "BLEU" in table_page.page_content  # Table 2 (BLEU scores) is on page 8
    for doc in pdf_docs:
        assert doc.metadata["source"] == "attention-is-all-you-need.pdf"
        assert doc.metadata["kind"] == "pdf"
        assert doc.metadata["title"]  # empty /Title in this file: falls back to the file name
        assert doc.metadata["sha256"] == pdf_docs[0].metadata["sha256"]
    import hashlib
    assert pdf_docs[0].metadata["sha256"] == hashlib.sha256(
        (corpus / "pdf" / "attention-is-all-you-need.pdf").read_bytes()).hexdigest()


def test_pdf_text_has_no_control_characters_and_its_quotes_are_still_found_on_the_page(pdf_docs, corpus):
    """PDFium gives "\x0f" for the paper's unmapped epsilon; a browser drew it as a box in the quote. The
    page picture finds the quote without it, and a quote stored with it before (an older store) too."""
    from loaders.pages import highlighted_page

    text = "".join(d.page_content for d in pdf_docs)
    assert not [c for c in text if ord(c) < 32 and c not in "\t\n"]
    assert "label smoothing of value ls = 0.1 [36]." in pdf_docs[7].page_content

    def marked(quotes: list[str]) -> int:
        return highlighted_pixels(highlighted_page(corpus / "pdf" / "attention-is-all-you-need.pdf", 8, quotes))

    plain = marked([])
    for quote in ("we employed label smoothing of value ls = 0.1 [36].", "we employed label smoothing of value \x0fls = 0.1 [36]."):
        assert marked([quote]) > plain + 1000, quote


def test_pdf_title_from_metadata(tmp_path, corpus):
    writer = pypdf.PdfWriter(clone_from=corpus / "pdf" / "attention-is-all-you-need.pdf")
    writer.add_metadata({"/Title": "Attention Is All You Need"})
    path = tmp_path / "titled.pdf"
    writer.write(path)
    assert {d.metadata["title"] for d in load(path)} == {"Attention Is All You Need"}


def tokens(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def token_f1(predicted: str, reference: str) -> float:
    p, r = collections.Counter(tokens(predicted)), collections.Counter(tokens(reference))
    common = sum((p & r).values())
    if not common:
        return 0.0
    precision, recall = common / sum(p.values()), common / sum(r.values())
    return 2 * precision * recall / (precision + recall)


def test_html_article_f1_against_readability_references(corpus):
    names = sorted(p.stem for p in REFERENCES.glob("*.txt"))
    assert len(names) >= 6
    scores = {}
    for name in names:
        text = "\n".join(d.page_content for d in load(corpus / "html" / f"{name}.html"))
        scores[name] = token_f1(text, (REFERENCES / f"{name}.txt").read_text())
    mean = sum(scores.values()) / len(scores)
    print("token F1 per page:", {k: round(v, 3) for k, v in scores.items()}, "mean", round(mean, 3))
    assert mean >= 0.93, scores
    assert min(scores.values()) >= 0.85, scores


@pytest.mark.parametrize("name, kept, dropped", [
    # (page, article text that must be there, page furniture that must not); each phrase is in the source page
    ("ars-1", ["Ammar Askar", "Named Binary Tag (NBT)"], ["Ars Technica"]),
    ("bbc-1", ["common sense gun safety laws", "Kenya trip"], ["BBC navigation", "More on this story"]),
    ("wikipedia", ["is a free-software community", "## History"], ["Privacy policy", "Create account",
                                                                             "Navigation menu"]),
    ("nytimes-1", ["lift trade sanctions", "deal with the devil"], ["Subscribe", "Site Index", "Log In"]),
    ("guardian-1", ["Hori Parata", "whale"], ["Most viewed", "comments"]),
])
def test_html_keeps_article_drops_furniture(corpus, name, kept, dropped):
    source = (corpus / "html" / f"{name}.html").read_text(errors="ignore")
    assert all(phrase in source for phrase in dropped)  # the furniture really is on the page
    docs = load(corpus / "html" / f"{name}.html")
    text = "\n".join(d.page_content for d in docs)
    for phrase in kept:
        assert phrase in text, f"{name}: lost {phrase!r}"
    for phrase in dropped:
        assert phrase not in text, f"{name}: kept furniture {phrase!r}"
    assert "<script" not in text and "function(" not in text
    assert docs[0].metadata["kind"] == "html" and docs[0].metadata["title"] != name  # the page's own title


def test_html_keeps_headings_lists_and_tables(corpus):
    text = load(corpus / "html" / "wikipedia.html")[0].page_content
    assert re.search(r"^#+ ", text, re.M), "headings"
    assert re.search(r"^- ", text, re.M), "list items"
    assert re.search(r"^\|.*\|$", text, re.M), "table rows"


def test_jsonl_one_document_a_record(corpus):
    path = corpus / "json" / "c4_demo.jsonl"
    docs = load(path)
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len(docs) == len(lines) == 300
    assert [d.metadata["record"] for d in docs] == list(range(300))
    assert docs[17].page_content == f"text: {lines[17]['text']}"
    assert {d.metadata["kind"] for d in docs} == {"jsonl"}


def test_json_array_records_as_key_value_text(corpus):
    docs = load(corpus / "finetune" / "alpaca_en_demo.json")
    records = json.loads((corpus / "finetune" / "alpaca_en_demo.json").read_text())
    assert len(docs) == len(records)
    third = docs[3]
    assert third.metadata["record"] == 3
    assert third.page_content.startswith(f"instruction: {records[3]['instruction']}")
    assert f"output: {records[3]['output']}" in third.page_content
    assert record_text({"a": {"b": "x", "n": 3}, "tags": ["p", "q"]}) == "a.b: x\ntags: p, q"


def test_json_jq_chooses_the_text(corpus):
    docs = load(corpus / "finetune" / "alpaca_en_demo.json", jq=".[].output")
    records = json.loads((corpus / "finetune" / "alpaca_en_demo.json").read_text())
    assert [d.page_content for d in docs[:5]] == [r["output"] for r in records[:5]]
    assert docs[4].metadata["record"] == 4 and docs[4].metadata["jq"] == ".[].output"
    lines = load(corpus / "json" / "c4_demo.jsonl", jq=".text")
    assert len(lines) == 300 and not lines[0].page_content.startswith("text:")


def test_timedtext_xml_entity_and_empty_cue(corpus):
    docs = load(corpus / "youtube" / "timedtext_sample.xml")
    assert len(docs) == 1
    doc = docs[0]
    # "&lt;i>not&lt;/i>" is an escaped tag: decoded, then dropped like youtube-transcript-api does.
    assert doc.page_content == ("Hey, this is just a test this is not the original transcript "
                                "just something shorter, I made up for testing")
    assert "  " not in doc.page_content  # the empty cue left no gap
    assert doc.metadata["start"] == 0.0 and doc.metadata["end"] == pytest.approx(5.7 + 3.239)
    assert doc.metadata["kind"] == "transcript"


def test_vtt_and_srt_written_by_youtube_transcript_api(tmp_path, corpus):
    """The real formatters of youtube-transcript-api write the corpus transcript; we read it back."""
    import xml.etree.ElementTree as ET

    from youtube_transcript_api._transcripts import (
        FetchedTranscript,
        FetchedTranscriptSnippet,
    )
    from youtube_transcript_api.formatters import SRTFormatter, WebVTTFormatter
    root = ET.parse(corpus / "youtube" / "timedtext_sample.xml").getroot()
    snippets = [FetchedTranscriptSnippet(text=el.text or "", start=float(el.get("start")), duration=float(el.get("dur")))
                for el in root.iter("text")]
    # a second passage a minute later, so start times must differ between passages
    snippets += [FetchedTranscriptSnippet(text="word " * 40, start=60.0 + i, duration=1.0) for i in range(20)]
    transcript = FetchedTranscript(snippets=snippets, video_id="x", language="English", language_code="en",
                                   is_generated=False)
    (tmp_path / "talk.vtt").write_text(WebVTTFormatter().format_transcript(transcript))
    (tmp_path / "talk.srt").write_text(SRTFormatter().format_transcript(transcript))
    vtt, srt = load(tmp_path / "talk.vtt"), load(tmp_path / "talk.srt")
    assert [d.page_content for d in vtt] == [d.page_content for d in srt]
    assert [d.metadata["start"] for d in vtt] == [d.metadata["start"] for d in srt]
    assert vtt[0].page_content.startswith("Hey, this is just a test this is not the original transcript")
    assert len(vtt) > 2 and vtt[0].metadata["start"] == 0.0 and vtt[-1].metadata["start"] >= 60.0
    assert [c.start for c in parse_cues("WEBVTT\n\n01:02:03.500 --> 01:02:04.000 align:start\n<v Bob>hi</v>\n")] == [3723.5]


def test_text_markdown_and_folders(tmp_path, corpus):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.md").write_text("# Project notes\n\nSome text about Qdrant.\n")
    (tmp_path / "notes" / "plain.txt").write_text("Plain text, latin-1: caf\xe9".encode("latin-1").decode("latin-1"),
                                                  encoding="latin-1")
    (tmp_path / "notes" / "image.png").write_bytes(b"\x89PNG....")  # a folder's pictures are skipped (figures, logos)
    (tmp_path / "notes" / ".hidden.txt").write_text("secret")
    docs = load(tmp_path / "notes")
    assert sorted(d.metadata["source"] for d in docs) == ["plain.txt", "readme.md"]
    md = next(d for d in docs if d.metadata["kind"] == "markdown")
    assert md.metadata["title"] == "Project notes"
    assert "café" in next(d for d in docs if d.metadata["kind"] == "text").page_content
    assert len(expand([corpus])) == 1 + 1 + 20 + 1 + 2 + 1  # README.md, pdf, html, jsonl, finetune json, youtube xml


def test_split_keeps_metadata_and_numbers_chunks(pdf_docs):
    chunks = split(pdf_docs, chunk_size=500, chunk_overlap=50)
    assert len(chunks) > len(pdf_docs)
    assert [c.metadata["chunk"] for c in chunks] == list(range(len(chunks)))
    assert all(len(c.page_content) <= 500 for c in chunks)
    assert {c.metadata["page"] for c in chunks} == set(range(1, 16))


# --- bad input: one line naming the source and saying why ----------------------------------------------

@pytest.fixture
def pdf_bytes(corpus) -> bytes:
    return (corpus / "pdf" / "attention-is-all-you-need.pdf").read_bytes()


def bad(path) -> str:
    with pytest.raises(LoadError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_empty_file(tmp_path):
    (tmp_path / "empty.pdf").write_bytes(b"")
    assert bad(tmp_path / "empty.pdf") == "empty.pdf: empty file"


def test_not_really_a_pdf(tmp_path, corpus):
    (tmp_path / "page.pdf").write_bytes((corpus / "html" / "ars-1.html").read_bytes())
    assert bad(tmp_path / "page.pdf").startswith("page.pdf: not a PDF")


def test_truncated_pdf(tmp_path, pdf_bytes):
    (tmp_path / "half.pdf").write_bytes(pdf_bytes[: len(pdf_bytes) // 2])
    assert bad(tmp_path / "half.pdf").startswith("half.pdf: truncated or corrupt PDF")


def test_corrupt_pdf(tmp_path, pdf_bytes):
    # a real header over bytes that are no PDF structure at all: nothing to recover
    noise = random.Random(0).randbytes(len(pdf_bytes) - 20)
    (tmp_path / "corrupt.pdf").write_bytes(pdf_bytes[:20] + noise)
    assert bad(tmp_path / "corrupt.pdf").startswith("corrupt.pdf: truncated or corrupt PDF")


def test_damaged_cross_reference_is_recovered(tmp_path, pdf_bytes):
    # damaged "xref" keywords: the objects are still there, and PDFium rebuilds the table as viewers do
    (tmp_path / "damaged.pdf").write_bytes(pdf_bytes.replace(b"xref", b"x\x00ef"))
    docs = load(tmp_path / "damaged.pdf")
    assert [d.metadata["page"] for d in docs] == list(range(1, 16))
    assert "warmup_steps = 4000" in docs[6].page_content


def test_encrypted_pdf(tmp_path, corpus):
    writer = pypdf.PdfWriter(clone_from=corpus / "pdf" / "attention-is-all-you-need.pdf")
    writer.encrypt("s3cret")
    writer.write(tmp_path / "locked.pdf")
    assert bad(tmp_path / "locked.pdf").startswith("locked.pdf: encrypted PDF")


def test_owner_password_only_pdf_opens(tmp_path, corpus):
    # restrictions without a user password: any viewer opens it, and so do we
    writer = pypdf.PdfWriter(clone_from=corpus / "pdf" / "attention-is-all-you-need.pdf")
    writer.encrypt(user_password="", owner_password="owner-only")
    writer.write(tmp_path / "restricted.pdf")
    assert len(load(tmp_path / "restricted.pdf")) == 15


def test_invalid_json_names_the_line(tmp_path, corpus):
    lines = (corpus / "json" / "c4_demo.jsonl").read_text().splitlines()
    lines[41] = lines[41][:-5]  # cut the closing quote and brace of record 42
    (tmp_path / "broken.jsonl").write_text("\n".join(lines))
    assert bad(tmp_path / "broken.jsonl").startswith("broken.jsonl: invalid JSON at line 42")
    text = (corpus / "finetune" / "identity.json").read_text().replace('"output"', 'output', 1)
    (tmp_path / "broken.json").write_text(text)
    line = text[: text.index("output: ") if "output: " in text else text.index('output')].count("\n") + 1
    assert bad(tmp_path / "broken.json").startswith(f"broken.json: invalid JSON at line {line}")


def test_bad_jq_expression(corpus):
    with pytest.raises(LoadError, match=r"invalid jq expression"):
        load(corpus / "json" / "c4_demo.jsonl", jq=".text |||")


def test_unsupported_type(tmp_path, pdf_bytes):
    (tmp_path / "slides.key").write_bytes(pdf_bytes[:100])
    assert bad(tmp_path / "slides.key").startswith("slides.key: unsupported file type '.key'")


def test_missing_path(tmp_path):
    assert bad(tmp_path / "nowhere.pdf") == f"{tmp_path / 'nowhere.pdf'}: no such file or folder"


@pytest.mark.parametrize("url", ["https://www.youtube.com/watch?v=dQw4w9WgXcQ", "https://youtu.be/dQw4w9WgXcQ",
                                 "https://example.org/article.html"])
def test_url_without_network_fails_fast(url):
    started = time.monotonic()
    message = bad(url)
    assert time.monotonic() - started < 20
    assert message.startswith(f"{url}: no network") or message.startswith(f"{url}: no answer within"), message


def test_text_from_windows_encodings_reads_as_written(tmp_path):
    """Notepad's "Unicode" and Excel's "Unicode Text" are UTF-16 with a byte-order mark, which was refused as
    binary; an old Windows file's curly quotes and € came out as control characters through Latin-1."""
    words = "The “Q3” budget is €1,200 – café’s share"
    (tmp_path / "notepad.txt").write_bytes(words.encode("utf-16"))  # with its BOM, as Notepad writes
    (tmp_path / "old.txt").write_bytes(words.encode("cp1252"))
    (tmp_path / "export.tsv").write_bytes("item\tcost\nferry\t€12\n".encode("utf-16"))
    assert load(tmp_path / "notepad.txt")[0].page_content == words
    assert load(tmp_path / "old.txt")[0].page_content == words
    [row] = load(tmp_path / "export.tsv")
    assert (row.page_content, row.metadata["location"]) == ("item: ferry\ncost: €12", "row 2")
    (tmp_path / "cut.txt").write_bytes(words.encode("utf-16")[:-1])  # an odd byte count: cut short
    with pytest.raises(LoadError, match=r"^cut.txt: damaged UTF-16 text \(byte \d+\)$"):
        load(tmp_path / "cut.txt")


def test_text_under_other_names_is_read_and_a_folder_leaves_code_out(tmp_path):
    """A .rst, .log or .py file was refused as an unsupported type. Named or dropped, each is read as text;
    a folder walk takes the documents and leaves the tooling beside them (scripts, configuration) out."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.rst").write_text("Install\n=======\n\nRun ``make run`` to start the ferry planner.\n")
    (tmp_path / "docs" / "ferry.log").write_text("2026-12-01 08:15 WARN ferry Kea delayed by 20 minutes\n")
    (tmp_path / "docs" / "plan.py").write_text("TIMETABLE = {'Kea': '08:15'}  # ferry departures\n")
    walked = load(tmp_path / "docs")
    assert sorted((d.metadata["source"], d.metadata["kind"]) for d in walked) == [("ferry.log", "text"), ("guide.rst", "text")]
    [code] = load(tmp_path / "docs" / "plan.py")
    assert (code.metadata["kind"], code.page_content) == ("code", "TIMETABLE = {'Kea': '08:15'}  # ferry departures\n")
    (tmp_path / "data.bin").write_bytes(b"\x00\x01")
    with pytest.raises(LoadError, match=r"^data.bin: unsupported file type '.bin' \(supported: "):
        load(tmp_path / "data.bin")
