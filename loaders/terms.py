"""The terms a text is matched by: content words, lowercased and stemmed (snowball, the stemmer Qdrant's
own BM25 uses), and figures in one form (4,000 = 4000). One home for the store's keyword (BM25) vectors
and for chatapp's evidence, so both match the same words.

The stemmer is PyStemmer, Snowball's own C library: the same stems as the pure-Python snowballstemmer on
all 30,777 words of the shared corpus, ~100x faster, which took ~1.5 s off ingesting that corpus (BM25
vectors are made between the embedder's batches, so their time adds to it)."""
from __future__ import annotations

import re
import threading
from functools import lru_cache

import Stemmer  # PyStemmer
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

WORD = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+(?:['’][^\W\d_]+)?", re.UNICODE)
STOP = frozenset(ENGLISH_STOP_WORDS) | {"used", "use", "using", "did", "does", "paper", "documents", "passage", "passages"}
_STEMMER = Stemmer.Stemmer("english")
# It keeps the word in hand on itself: concurrent answers (eight /v1 requests) raised IndexError inside
# snowball, and PyStemmer documents its stemmers as not thread-safe either. One caller at a time; stems are
# cached, so the lock is rarely taken twice for a word.
_STEMMER_LOCK = threading.Lock()


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    with _STEMMER_LOCK:
        return _STEMMER.stemWord(word)


def figure_key(text: str) -> str:
    """A figure as compared: 4,000 = 4000, −9 = -9, 10 % = 10%."""
    text = text.replace("−", "-").replace(" ", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?%?", text):
        text = text.replace(",", "")
    return text.rstrip(".")


# An ISO date ("2026-11-06", a spreadsheet's or a CSV's) is matched by the words people ask with as well:
# "6 November" finds it. Without them, "Why were sailings cancelled on 6 November?" ranked the row of
# 2026-11-03 above the row of 2026-11-06.
_ISO_DATE = re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")


def iso_date_days(text: str) -> list[tuple[str, str]]:
    """(day, month name) of each ISO date in the text: "2026-11-06" -> ("6", "november")."""
    return [(str(int(day)), MONTHS[int(month) - 1]) for _, month, day in _ISO_DATE.findall(text or "")
            if 1 <= int(month) <= 12 and 1 <= int(day) <= 31]


def terms(text: str) -> list[str]:
    """Content words, lowercased and stemmed, in order (repeats kept); figures as figure keys; an ISO date's
    day and month name after them."""
    out = []
    for word in WORD.findall(text or ""):
        if word[0].isdigit():
            out.append(figure_key(word))
        else:
            lower = word.lower()
            if lower not in STOP and len(lower) > 1:
                out.append(stem(lower))
    for day, month in iso_date_days(text):
        out += [day, stem(month)]
    return out
