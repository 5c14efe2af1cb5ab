"""loaders.html on real pages of Zyte's article-extraction benchmark (bench/data/html/zyte), against the
article text marked by hand: the article is kept whole and the page's furniture is left out."""
from __future__ import annotations

import collections
import gzip
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loaders import load
from loaders.html import extract

ROOT = Path(__file__).resolve().parents[1]
ZYTE = ROOT / "bench" / "data" / "html" / "zyte"
WIRED = "d48aeb9cf2f2ff15769a57513249b4a6a669159f3e50b335e741d4206a824e88"  # wired.com, 1,400 words


@pytest.fixture(scope="module")
def truth() -> dict:
    return json.loads((ZYTE / "ground-truth.json").read_text())


def page(key: str) -> bytes:
    return gzip.decompress((ZYTE / "html" / f"{key}.html.gz").read_bytes())


def token_f1(predicted: str, reference: str) -> float:
    p, r = (collections.Counter(re.findall(r"\w+", t.lower())) for t in (predicted, reference))
    common = sum((p & r).values())
    return 0.0 if not common else 2 * common / (sum(p.values()) + sum(r.values()))


def test_whole_article_kept_and_furniture_dropped(truth):
    # trafilatura alone keeps only the first third of this article: the readability check catches it
    html, reference = page(WIRED), truth[WIRED]["articleBody"]
    title, text = extract(html, truth[WIRED]["url"])
    assert title == "Chasing Instagram Analytics, My Friend Became a Grocery Store"
    paragraphs = [p.strip() for p in reference.split("\n") if p.strip()]
    for paragraph in (paragraphs[0], paragraphs[len(paragraphs) // 2], paragraphs[-1]):
        assert paragraph[:80] in text, f"lost {paragraph[:80]!r}"
    source = html.decode()
    for furniture in ("Newsletter", "Privacy Policy", "Advertisement", "Subscribe"):
        assert furniture in source and furniture not in text, furniture
    assert token_f1(text, reference) >= 0.97


def test_load_reads_a_benchmark_page(truth, tmp_path):
    # the loader's HTML path is this extractor: the page's date, then the same text, and the page's title
    path = tmp_path / "wired.html"
    path.write_bytes(page(WIRED))
    docs = load(path)
    assert len(docs) == 1 and docs[0].metadata["title"].startswith("Chasing Instagram Analytics")
    dateline, article = docs[0].page_content.split("\n\n", 1)
    assert dateline == "Published 15 November 2019" and article == extract(page(WIRED))[1]
    assert token_f1(docs[0].page_content, truth[WIRED]["articleBody"]) >= 0.97


@pytest.mark.slow
def test_holdout_mean_f1_meets_the_target(truth):
    # the target on pages not tuned on (the holdout half of bench/html_extraction.py's split)
    holdout = [k for k in sorted(truth) if hashlib.sha256(k.encode()).digest()[0] % 2 == 1]
    scores = [token_f1(extract(page(k))[1], truth[k]["articleBody"]) for k in holdout]
    assert len(holdout) == 90
    assert sum(scores) / len(scores) >= 0.96


def test_unparseable_page_is_one_line(tmp_path):
    # readability cannot parse a page of comments only; the source is refused in one line, no traceback.
    # In a fresh interpreter: pytest's own log capture would hide what a user's console shows.
    path = tmp_path / "empty.html"
    path.write_text("<!-- nothing here -->")
    code = ("import sys; from loaders import LoadError, load\n"
            "try: load(sys.argv[1])\n"
            "except LoadError as err: print(err)")
    run = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "empty.html: no text found"
    assert "Traceback" not in run.stderr, run.stderr
