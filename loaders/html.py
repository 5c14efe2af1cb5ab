"""An HTML page's title and article text, as Markdown (headings, lists and tables stay visible).

    from loaders.html import extract
    title, text = extract(page_bytes, url)

trafilatura with favor_precision is the best single extractor on the tune half of bench/data/html
(it drops most page furniture), but now and then it drops part of the article too. readability-lxml,
rendered by html2text, is the yardstick for that: when trafilatura's text is much shorter than
readability's, trafilatura's default (less strict) text is taken, and when that is short too, readability's.
readability runs only when the precise text is short beside all the page's paragraphs (about 1 page in 10).
bench/html_extraction.py chose this, and the ratios, on 181 pages of Zyte's article-extraction benchmark
(bench/results/html.md).
"""
from __future__ import annotations

import logging
import re
from datetime import date
from typing import Callable

import html2text
import trafilatura
from readability import Document as Readability
from readability.readability import Unparseable

# A text is kept while it has at least this share of readability's words: the precise one, then
# trafilatura's default. The largest ratios at the tune half's best F1 (bench/html_extraction.py sweeps them).
# Without the middle step (precise text, else readability's) it ties on the tune half, but keeps too
# little of one of the six pages tested before (mozilla-1: F1 0.73, with the middle step 0.96).
PRECISE_RATIO, DEFAULT_RATIO = 0.65, 0.55

# readability logs a traceback at ERROR for a page it cannot parse before it raises Unparseable, which
# readability_text handles: without this, one bad source would print a traceback, not one line.
logging.getLogger("readability.readability").setLevel(logging.CRITICAL)

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")  # named here, not by the locale, so a date reads the same everywhere

_INLINE_TAG = re.compile(r"</?(?:sup|sub|small|mark|ins|del|u)>")
_MARKDOWN_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>])")
_WORD = re.compile(r"\w+")


def clean(text: str) -> str:
    """Drop what trafilatura's and html2text's Markdown leave for a renderer: <sup>/<sub> tags and
    backslash escapes ("\\[edit\\]", "1\\."). They are noise to the embedder and to a reader."""
    return _MARKDOWN_ESCAPE.sub(r"\1", _INLINE_TAG.sub("", text))


def words(text: str) -> int:
    return len(_WORD.findall(text))


def trafilatura_text(html, url: str | None = None, **options) -> str:
    """trafilatura's article text as Markdown, from bytes, str or a tree from trafilatura.load_html;
    `options` override favor_precision and the others."""
    settings = dict(output_format="markdown", include_tables=True, include_comments=False,
                    include_links=False, include_images=False, favor_precision=True)
    return clean(trafilatura.extract(html, url=url, **{**settings, **options}) or "")


def readability_text(html: bytes | str, url: str | None = None) -> str:
    """readability-lxml's article, rendered as Markdown by html2text; "" for a page it cannot parse."""
    try:
        article = Readability(html, url=url).summary(html_partial=True)
    except Unparseable:
        return ""
    renderer = html2text.HTML2Text()
    renderer.ignore_links = renderer.ignore_images = True  # link targets are not the article's words
    renderer.body_width = 0  # no hard wrapping: the splitter cuts paragraphs at blank lines
    return clean(renderer.handle(article)).strip()


def choose(precise: str, readability: str, default: Callable[[], str],
           ratios: tuple[float, float] = (PRECISE_RATIO, DEFAULT_RATIO)) -> str:
    """The precise text, else trafilatura's default (`default()`, made only when needed), else readability's."""
    if words(precise) >= ratios[0] * words(readability):
        return precise
    text = default()
    return text if words(text) >= ratios[1] * words(readability) else readability


def dateline(day: str | None) -> str | None:
    """'Published 24 July 2015' for trafilatura's '2015-07-24'; None without a date."""
    try:
        when = date.fromisoformat(day or "")
    except ValueError:
        return None
    return f"Published {when.day} {MONTHS[when.month - 1]} {when.year}"


def extract(html: bytes | str, url: str | None = None, *, with_date: bool = False) -> tuple[str | None, str]:
    """(title or None, article text in Markdown). A tiny page with no article keeps its visible text.
    with_date: the page's publication date, where its metadata has one, as the text's first line (the
    article text alone leaves the byline out, and "when was this published?" is a fair question)."""
    tree = trafilatura.load_html(html)  # parsed once for trafilatura's readers (each works on a copy)
    if tree is None:
        return None, trafilatura.html2txt(html)
    precise = trafilatura_text(tree, url)
    # readability costs twice trafilatura. Its article is part of the page's paragraphs (trafilatura's
    # baseline, a third of its cost), so a precise text that is long beside those is long beside it too.
    if words(precise) >= PRECISE_RATIO * words(trafilatura.baseline(tree)[1]):
        text = precise
    else:
        text = choose(precise, readability_text(html, url), lambda: trafilatura_text(tree, url, favor_precision=False))
    if not text.strip():
        text = trafilatura.html2txt(html)  # not the tree: html2txt cleans the tree it is given in place
    # Last: it does not promise to leave the tree be. No extensive date search: it guesses (1 January
    # 1998 for the corpus's mozilla-1), and a missing date is better than a wrong one.
    meta = trafilatura.extract_metadata(tree, default_url=url, extensive=False)
    line = dateline(meta.date) if with_date and meta else None
    return (meta.title if meta and meta.title else None), f"{line}\n\n{text}" if line else text
