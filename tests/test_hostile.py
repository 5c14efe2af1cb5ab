"""Hostile inputs, second round: each is made here, then read by the real loader (in its memory-capped reader
child) and ingested by the real store. Each is stored with bounded memory or gets a one-line reason; nothing
of a failed source stays in the store, and the rest of the batch goes on. Where the claim is a memory
bound, a fresh Python process reads the input and reports its own and its reader child's peak RSS."""
from __future__ import annotations

import json
import os
import random
import resource
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from chatapp.settings import Settings
from loaders import LoadError, load, load_bytes, source_key
from loaders.documents import MAX_NAME
from loaders.store import get_store

ROOT = Path(__file__).resolve().parents[1]
BOMB_LIMIT_MB = 1536  # the reader's ceiling in these tests (default 3072): the bomb fails sooner, using less


def write_objects(path: Path, objects: list[bytes]) -> None:
    """A PDF of these objects (numbered from 1, the first being the catalog) with its cross-reference table.
    Written out here because the hostile parts (a stream that inflates to gigabytes, thousands of pages)
    are what the tests are about."""
    with path.open("wb") as out:
        out.write(b"%PDF-1.7\n")
        offsets = []
        for number, body in enumerate(objects, start=1):
            offsets.append(out.tell())
            out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
        xref = out.tell()
        out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
        out.write(b"".join(b"%010d 00000 n \n" % offset for offset in offsets))
        out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))


def stream(content: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d%s >>\nstream\n" % (len(content), extra) + content + b"\nendstream"


def write_pdf(path: Path, contents: list[bytes], *, flate: bool = False) -> None:
    """A PDF with one page per content stream, all in Helvetica."""
    count = len(contents)
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(count)), count),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, content in enumerate(contents):
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >>"
                       b" /Contents %d 0 R >>" % (5 + 2 * i))
        objects.append(stream(content, b" /Filter /FlateDecode" if flate else b""))
    write_objects(path, objects)


def flate_bomb(prefix: bytes, gib: float, fill: bytes = b" ") -> bytes:
    """A zlib stream of `prefix` then `gib` GiB of `fill` bytes, ~1 MB a GiB. Deflate after a full flush starts
    afresh, so every 16 MiB block compresses to the same bytes: compressed once, repeated, and the checksum
    computed over the blocks without ever holding the inflated data."""
    block = fill * (1 << 24)
    packer = zlib.compressobj(9)
    head = packer.compress(prefix) + packer.flush(zlib.Z_FULL_FLUSH)
    middle = packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH)
    blocks = round(gib * 64)
    adler = zlib.adler32(prefix)
    for _ in range(blocks):
        adler = zlib.adler32(block, adler)
    return head + middle * blocks + packer.flush()[:-4] + struct.pack(">I", adler)


def page_text(number: int) -> bytes:
    return b"BT /F1 11 Tf 72 700 Td (Page %d of the long report: the audit code on this page is AX%05d.) Tj ET" % (
        number, number)


def peak(code: str, env: dict | None = None) -> dict:
    """Run `code` in a fresh Python; returns what it printed as JSON on its last line, plus the peak RSS (MB)
    of that process (`self_mb`: VmHWM, which starts afresh at exec, unlike ru_maxrss that keeps the forking
    parent's) and of its reader child (`reader_mb`: ru_maxrss of the waited-for children, an upper bound)."""
    script = textwrap.dedent(code) + textwrap.dedent("""
        import json as _json, re as _re, resource as _resource
        from loaders.reader import READER as _READER
        _READER.close()
        _hwm = int(_re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
        print(_json.dumps({**RESULT, "self_mb": _hwm // 1024,
            "reader_mb": _resource.getrusage(_resource.RUSAGE_CHILDREN).ru_maxrss // 1024}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


READ = """
    import sys, time
    from loaders import LoadError, load
    started = time.monotonic()
    try:
        docs = load(sys.argv[1] if len(sys.argv) > 1 else {path!r})
        RESULT = {{"docs": len(docs), "chars": sum(len(d.page_content) for d in docs), "pages": [d.metadata.get("page") for d in docs][-1:]}}
    except LoadError as err:
        RESULT = {{"error": str(err)}}
    RESULT["seconds"] = round(time.monotonic() - started, 2)
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = get_store(Settings.from_env(data_dir=tmp_path_factory.mktemp("hostile") / "data"))
    yield store
    store.close()


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.pdf"
    write_pdf(path, [flate_bomb(b"BT /F1 24 Tf 72 700 Td (Hello from the bomb) Tj ET\n", gib=8)], flate=True)
    assert path.stat().st_size < 10 * 2**20  # 8 GiB inflated, under 10 MB on disk
    return path


def test_decompression_bomb_pdf_is_refused_and_the_app_keeps_its_memory(bomb):
    result = peak(READ.format(path=str(bomb)), env={"CHATAPP_READ_MEMORY_MB": str(BOMB_LIMIT_MB)})
    print("bomb:", result)
    assert result["error"] == (f"bomb.pdf: reading it needs more than {BOMB_LIMIT_MB} MB of memory (a decompression "
                               "bomb?); CHATAPP_READ_MEMORY_MB sets the limit")
    assert result["reader_mb"] <= BOMB_LIMIT_MB  # the child hit its ceiling, never the machine's memory
    assert result["self_mb"] < 400  # the process that asked (the app) never held the inflated stream


def test_a_batch_of_hostile_sources_stores_only_the_good_one(store, bomb, tmp_path, monkeypatch):
    monkeypatch.setenv("CHATAPP_READ_MEMORY_MB", str(BOMB_LIMIT_MB))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    deep_lines = tmp_path / "deep.jsonl"
    deep_lines.write_text('{"text": "fine"}\n' + '{"a":' * 100_000 + "1" + "}" * 100_000 + "\n")
    with zipfile.ZipFile(tmp_path / "archive.pdf", "w") as archive:  # a ZIP renamed .pdf
        archive.writestr("notes.txt", "a zip file is not a PDF")
    (tmp_path / "archive.docx").write_bytes((tmp_path / "archive.pdf").read_bytes())  # a ZIP that is no DOCX
    sparse = tmp_path / "sparse.jsonl"
    with sparse.open("wb") as handle:  # 300 MB of NUL bytes, no newline: sparse, so it costs no disk
        handle.truncate(300 * 2**20)
    good = tmp_path / "good.md"
    good.write_text("# Harbour log\n\nThe ferry to Skerry Island leaves at 07:40 on weekdays.\n")
    too_long = tmp_path / ("n" * 396 + ".txt")  # 400 characters: more than the file system allows
    with_nul = str(tmp_path / "bad\x00name.txt")
    sources = [bomb, deep, deep_lines, tmp_path / "archive.pdf", tmp_path / "archive.docx", sparse, with_nul,
               too_long, good]
    before = store.count()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seen: list[float] = []
    results = store.ingest(sources, progress=lambda fraction, message: seen.append(fraction))
    lines = [r.summary() for r in results]
    print("\n".join(lines))
    by_name = {r.source: r for r in results}
    assert all("\n" not in line and "\x00" not in line for line in lines)
    assert by_name["bomb.pdf"].error.startswith(f"reading it needs more than {BOMB_LIMIT_MB} MB of memory")
    assert by_name["deep.json"].error.startswith("nested too deeply to read")
    assert by_name["deep.jsonl"].error.startswith("nested too deeply to read")
    assert by_name["archive.pdf"].error == "not a PDF (the file does not start with %PDF)"
    assert by_name["archive.docx"].error.startswith("cannot read docx: ")
    assert by_name["sparse.jsonl"].error == "line 1 is longer than 16 MB (not JSON Lines?)"
    assert by_name["bad?name.txt"].error == "no such file or folder"
    long_key = source_key(too_long)
    assert len(long_key) == MAX_NAME and long_key.endswith("….txt")
    assert by_name[long_key].error == "cannot read: File name too long"
    assert by_name["good.md"].ok and by_name["good.md"].chunks == 1
    assert [r.source for r in results][-1] == "good.md"  # the batch went on to the end
    assert store.count() == before + 1
    assert {e["source"] for e in store.list_sources()} & set(by_name) == {"good.md"}
    assert seen == sorted(seen) and seen[-1] == 1.0
    # the app's process stayed small: an 8 GiB bomb, a 300 MB file and 100,000 levels never came into it
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024 < 200
    hits = store.search("When does the ferry to Skerry Island leave?", k=1)
    assert hits[0][0].metadata["source"] == "good.md"


def test_names_with_folders_nul_and_400_characters(store, tmp_path):
    docs = load_bytes(b"Uploaded text about tide tables.", "../../etc/tides.txt", kind="text")
    assert {d.metadata["source"] for d in docs} == {"tides.txt"}  # never a path, so never '../'
    long_name = "t" * 396 + ".txt"
    docs = load_bytes(b"A note whose name is 400 characters long.", long_name, kind="text")
    assert docs[0].metadata["source"] == long_name[: MAX_NAME - 5] + "….txt"
    assert source_key("report\x00.pdf") == "report?.pdf" and source_key("a\nb.txt") == "a?b.txt"
    # a real file under a folder reached through '..': stored by its name alone
    (tmp_path / "inner").mkdir()
    (tmp_path / "note.txt").write_text("Lighthouse keepers log the weather at noon.")
    results = store.ingest([tmp_path / "inner" / ".." / "note.txt"])
    assert results[0].ok and results[0].source == "note.txt"
    assert "note.txt" in {e["source"] for e in store.list_sources()}
    store.delete("note.txt")


def test_json_nested_100000_levels_is_one_line():
    data = ("[" * 100_000 + "]" * 100_000).encode()
    with pytest.raises(LoadError) as info:
        load_bytes(data, "deep.json", kind="json", jq=".[]")
    assert str(info.value).startswith("deep.json: nested too deeply to read")


def test_300_mb_jsonl_is_streamed_and_stops_at_the_text_limit(tmp_path):
    path = tmp_path / "big.jsonl"
    rng = random.Random(7)
    words = [f"w{n}" for n in range(5000)]
    lines = [json.dumps({"id": n, "text": " ".join(rng.choice(words) for _ in range(180))}) + "\n" for n in range(500)]
    block = "".join(lines).encode()
    with path.open("wb") as handle:
        while handle.tell() < 300 * 2**20:
            handle.write(block)
    size_mb = path.stat().st_size / 2**20
    assert size_mb >= 300
    # The default limit (64 MB of text): read a line at a time until the limit, then one line of reason.
    result = peak(READ.format(path=str(path)))
    print(f"{size_mb:.0f} MB JSONL, default limit:", result)
    assert result["error"] == ("big.jsonl: more than 64 MB of text: split it into smaller files, or raise "
                               "CHATAPP_MAX_SOURCE_MB")
    assert result["reader_mb"] < 600 and result["self_mb"] < 300  # neither held the 300 MB file
    # Under a raised limit the same file streams to its end; the reader's peak follows the text it keeps
    # (what the store needs), not the file: here a 16 MB limit over a file 20 times larger.
    small = peak(READ.format(path=str(path)), env={"CHATAPP_MAX_SOURCE_MB": "16"})
    assert small["error"].startswith("big.jsonl: more than 16 MB of text")
    assert small["reader_mb"] < result["reader_mb"]


def test_2000_page_pdf_is_stored_with_progress_and_bounded_memory(store, tmp_path):
    path = tmp_path / "long.pdf"
    write_pdf(path, [page_text(n) for n in range(1, 2001)])
    result = peak(READ.format(path=str(path)))
    print("2000 pages:", result)
    assert result["docs"] == 2000 and result["pages"] == [2000]
    assert result["reader_mb"] < 400 and result["self_mb"] < 400
    seen: list[tuple[float, str]] = []
    started = time.monotonic()
    [stored] = store.ingest([path], progress=lambda fraction, message: seen.append((fraction, message)))
    print(f"2000 pages stored in {time.monotonic() - started:.1f} s, {len(seen)} progress updates")
    assert stored.ok and stored.chunks == 2000
    assert [f for f, _ in seen] == sorted(f for f, _ in seen) and seen[-1][0] == 1.0
    assert sum("embedding long.pdf" in message for _, message in seen) >= 2000 // 256
    assert [m for _, m in seen if m.startswith("reading long.pdf: page")][-1] == "reading long.pdf: page 2000/2000"
    assert sum(m.startswith("reading long.pdf: page") for _, m in seen) == 2000 // 50  # every 50 pages
    hits = store.search("audit code AX01234", k=3)
    assert 1234 in [doc.metadata["page"] for doc, _ in hits]
    store.delete("long.pdf")


def test_50_mb_html_page_is_read_within_the_memory_ceiling(tmp_path):
    # Sized down from 50 MB to keep the test short (trafilatura takes ~70 s for 50 MB on two busy cores,
    # peak 1.0 GB); the reader's ceiling holds at any size.
    path = tmp_path / "big.html"
    rng = random.Random(3)
    words = "harbour ferry tide keeper lamp storm jetty oak hill island weather noon".split()
    paragraphs = ["<p>" + " ".join(rng.choice(words) for _ in range(80)) + ".</p>\n" for _ in range(200)]
    with path.open("w") as handle:
        handle.write("<html><head><title>Big page</title></head><body><article><h1>Big</h1>\n")
        while handle.tell() < 16 * 2**20:
            handle.write("".join(paragraphs))
        handle.write("</article></body></html>")
    result = peak(READ.format(path=str(path)))
    print("16 MB HTML:", result)
    assert result["docs"] >= 1 and result["chars"] > 10 * 2**20
    assert result["reader_mb"] < 3072 and result["self_mb"] < 300


def test_a_scanned_page_whose_image_would_inflate_to_400_mb_is_not_rendered(tmp_path):
    width, height = 16384, 24576  # 402 M pixels of grey: 400 MB once decoded, under 400 KB on disk
    image = flate_bomb(b"", gib=width * height / 2**30, fill=b"\x00")
    path = tmp_path / "poster.pdf"
    write_objects(path, [
        b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /XObject << /Im1 5 0 R >> >> /Contents 4 0 R >>",
        stream(b"q 612 0 0 792 0 0 cm /Im1 Do Q"),
        stream(image, b" /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
                      b"/BitsPerComponent 8 /Filter /FlateDecode" % (width, height))])
    result = peak(READ.format(path=str(path)))
    print("image bomb:", result)
    assert result["error"] == ("poster.pdf: PDF has no text layer and OCR failed: page 1: an image of 16384×24576 "
                               "pixels is over the 100 M pixel limit (a decompression bomb?)")
    assert result["seconds"] < 10 and result["reader_mb"] < 300


def test_the_reader_serves_threads_at_once_and_comes_back_after_a_bomb(corpus, bomb, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    sources = [corpus / "pdf" / "attention-is-all-you-need.pdf", corpus / "html" / "ars-1.html"] * 3
    with ThreadPoolExecutor(4) as pool:  # the Documents tab and the CLI may both read while a chat renders
        first = list(pool.map(load, sources))
    assert [len(docs) for docs in first[:2]] == [15, 1] and all(
        [d.page_content for d in a] == [d.page_content for d in b] for a, b in zip(first, first[2:]))
    monkeypatch.setenv("CHATAPP_READ_MEMORY_MB", str(BOMB_LIMIT_MB))
    with pytest.raises(LoadError, match="needs more than"):
        load(bomb)
    assert [d.page_content for d in load(sources[0])] == [d.page_content for d in first[0]]  # a fresh child
