"""HTML article extraction on pages the extractor was not tuned on: token F1 against human ground truth.

    python bench/html_extraction.py [--out bench/results]

Data: Zyte's article-extraction benchmark, 181 real pages with a hand-made articleBody each
(bench/data/html/zyte, see the README there). The pages are split in two halves, fixed by the first
byte of sha256(page id): even -> tune, odd -> holdout. Combinations' ratios are chosen on the tune
half only (best mean F1; among ties the largest ratio, i.e. the most fallback that costs nothing);
both halves are reported, and the holdout half is the measure of pages not tuned on.

Metric: bag-of-tokens F1 per page, then the mean over pages (and mean precision and recall). Tokens
are Python's Unicode \\w+ runs, lower-cased; a token counts as matched as many times as it is in both
texts (multiset intersection). The extracted text is the article body only, not the title.
"zyte F1" is the benchmark's own measure, for comparison with its README: 4-gram shingles, F1 of
the mean precision and mean recall.

Each extractor runs once per page, all of them page by page in turn; a combination is scored from its
parts' texts, and its ms/page is the sum of its parts'. The shipped extractor, loaders.html.extract, is
also run end to end (it runs readability and trafilatura's default only where needed) and timed so.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import statistics
import sys
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lxml.html  # noqa: E402
import trafilatura  # noqa: E402
from readability import Document as Readability  # noqa: E402
from readability.readability import Unparseable  # noqa: E402

from loaders import html as ours  # noqa: E402

DATA = ROOT / "bench" / "data" / "html" / "zyte"
# The six pages the extractor was tuned on before (Readability's text as reference): a regression check.
OLD_PAGES, OLD_REFERENCES = ROOT.parent / "shared" / "corpus" / "html", ROOT / "tests" / "references" / "readability"
RATIOS = [x / 20 for x in range(2, 20)]  # 0.10 .. 0.95
TOKEN = re.compile(r"\w+")


def pages() -> tuple[dict[str, bytes], dict[str, str]]:
    truth = json.loads((DATA / "ground-truth.json").read_text())
    html = {key: gzip.decompress((DATA / "html" / f"{key}.html.gz").read_bytes()) for key in sorted(truth)}
    return html, {key: truth[key]["articleBody"] for key in html}


def half(key: str) -> str:
    return "tune" if hashlib.sha256(key.encode()).digest()[0] % 2 == 0 else "holdout"


def prf(predicted: str, reference: str) -> tuple[float, float, float]:
    p, r = Counter(TOKEN.findall(predicted.lower())), Counter(TOKEN.findall(reference.lower()))
    common = sum((p & r).values())
    if not common:
        return 0.0, 0.0, 0.0
    precision, recall = common / sum(p.values()), common / sum(r.values())
    return precision, recall, 2 * precision * recall / (precision + recall)


def zyte_f1(texts: dict[str, str], truth: dict[str, str], keys: list[str]) -> float:
    """evaluate.py's measure: per page tp/fp/fn over 4-gram shingles normalised to sum 1, F1 of the means."""
    def shingles(text):
        tokens = TOKEN.findall(text or "")
        return Counter(tuple(tokens[i:i + 4]) for i in range(max(1, len(tokens) - 3)) if tokens[i:i + 4])

    precisions, recalls = [], []
    for key in keys:
        t, p = shingles(truth[key]), shingles(texts[key])
        tp = sum((t & p).values())
        fp, fn = sum(p.values()) - tp, sum(t.values()) - tp
        if fp == fn == 0:
            precisions.append(1.0), recalls.append(1.0)
            continue
        if tp + fp:
            precisions.append(tp / (tp + fp))
        if tp + fn:
            recalls.append(tp / (tp + fn))
    precision, recall = statistics.mean(precisions), statistics.mean(recalls)
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def readability_lxml_text(html: bytes) -> str:
    try:
        return lxml.html.fromstring(Readability(html).summary(html_partial=True)).text_content()
    except Unparseable:
        return ""


def old_loader_text(html: bytes) -> str:
    """What loaders read from a page before loaders.html: trafilatura favor_recall, and the page's title."""
    text = ours.trafilatura_text(html, favor_precision=False, favor_recall=True)
    trafilatura.extract_metadata(html)  # timed with the text, as extract() is
    return text


# name -> (what it is, function of the page's bytes)
EXTRACTORS = {
    "baseline": ("the loaders' extractor before this bench: trafilatura favor_recall, Markdown, tables "
                 "(timed with the page's title, as loaders.html.extract is)", old_loader_text),
    "trafilatura": ("trafilatura.extract defaults (text)", lambda h: trafilatura.extract(h) or ""),
    "trafilatura-md": ("trafilatura defaults, Markdown, tables",
                       lambda h: ours.trafilatura_text(h, favor_precision=False)),
    "trafilatura-precision": ("trafilatura favor_precision, Markdown, tables", ours.trafilatura_text),
    "trafilatura-recall": ("trafilatura favor_recall (text)",
                           lambda h: trafilatura.extract(h, favor_recall=True) or ""),
    "readability-html2text": ("readability-lxml, rendered by html2text", ours.readability_text),
    "readability-lxml": ("readability-lxml, lxml text_content()", readability_lxml_text),
}


def run(extractors: dict, html: dict[str, bytes]) -> tuple[dict[str, dict[str, str]], dict[str, float]]:
    """Texts and ms/page of each extractor. Page by page, all extractors in turn: on a shared machine
    a burst of load then falls on all of them alike."""
    texts, seconds = {name: {} for name in extractors}, dict.fromkeys(extractors, 0.0)
    for key, page in html.items():
        for name, fn in extractors.items():
            start = time.perf_counter()
            texts[name][key] = fn(page)
            seconds[name] += time.perf_counter() - start
    return texts, {name: s * 1000 / len(html) for name, s in seconds.items()}


def mean_scores(texts: dict[str, str], truth: dict[str, str], keys: list[str]) -> dict:
    scores = [prf(texts[key], truth[key]) for key in keys]
    return {"f1": statistics.mean(s[2] for s in scores), "precision": statistics.mean(s[0] for s in scores),
            "recall": statistics.mean(s[1] for s in scores), "zyte_f1": zyte_f1(texts, truth, keys)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    html, truth = pages()
    keys = list(html)
    split = {"tune": [k for k in keys if half(k) == "tune"], "holdout": [k for k in keys if half(k) == "holdout"]}
    print(f"{len(keys)} pages: {len(split['tune'])} tune, {len(split['holdout'])} holdout; load {os.getloadavg()[0]:.1f}",
          flush=True)

    shipped = (ours.PRECISE_RATIO, ours.DEFAULT_RATIO)
    texts, ms = run({**{name: fn for name, (_, fn) in EXTRACTORS.items()},
                     "loaders.html.extract": lambda h: ours.extract(h)[1],
                     "as stored (with_date)": lambda h: ours.extract(h, with_date=True)[1]}, html)
    about = {name: what for name, (what, _) in EXTRACTORS.items()}
    about["loaders.html.extract"] = (f"the shipped extractor, end to end (ratios {shipped[0]}, {shipped[1]}; "
                                     "readability only where trafilatura's baseline says the precise text may be short)")
    about["as stored (with_date)"] = ("what the loader stores: the same text after a line with the page's date, "
                                      "where its metadata has one ('Published 24 July 2015')")
    shipped_text, stored_text = texts.pop("loaders.html.extract"), texts.pop("as stored (with_date)")
    for name in texts:
        print(f"  {name}: {ms[name]:.1f} ms/page", flush=True)

    precise, default, read = texts["trafilatura-precision"], texts["trafilatura-md"], texts["readability-html2text"]
    count = ours.words
    # Each combination, as a function of its ratios; swept on the tune half.
    combos = {
        "readability, else trafilatura-md": (
            "readability-html2text unless it has < r x trafilatura-md's words; then trafilatura-md",
            [(r,) for r in RATIOS], ("readability-html2text", "trafilatura-md"),
            lambda r: lambda k: default[k] if count(read[k]) < r * count(default[k]) else read[k]),
        "trafilatura-precision, else readability": (
            "trafilatura-precision unless it has < r x readability's words; then readability-html2text",
            [(r,) for r in RATIOS], ("trafilatura-precision", "readability-html2text"),
            lambda r: lambda k: read[k] if count(precise[k]) < r * count(read[k]) else precise[k]),
        "cascade (loaders.html)": (
            "trafilatura-precision, else trafilatura-md, else readability-html2text "
            "(each kept while it has >= r1, r2 x readability's words): loaders.html.choose",
            [(a, b) for a in RATIOS for b in RATIOS],
            ("trafilatura-precision", "trafilatura-md", "readability-html2text"),
            lambda a, b: lambda k: ours.choose(precise[k], read[k], lambda: default[k], (a, b))),
    }
    chosen_ratios = {}
    for name, (what, grid, parts, make) in combos.items():
        # best tune F1, ties to the largest ratios (max over (F1, ratios) tuples)
        swept = [(round(statistics.mean(prf(make(*r)(k), truth[k])[2] for k in split["tune"]), 4), r) for r in grid]
        best = max(swept)
        chosen_ratios[name] = best[1]
        texts[name] = {key: make(*best[1])(key) for key in keys}
        ms[name] = sum(ms[p] for p in parts)
        about[name] = what + f"; ratios chosen on tune: {', '.join(str(x) for x in best[1])}"
        print(f"  {name}: tune F1 {best[0]} at ratios {best[1]}", flush=True)

    old = {}
    if OLD_PAGES.is_dir():
        two_way = chosen_ratios["trafilatura-precision, else readability"][0]
        for ref in sorted(OLD_REFERENCES.glob("*.txt")):
            page, reference = (OLD_PAGES / f"{ref.stem}.html").read_bytes(), ref.read_text()
            p, r = ours.trafilatura_text(page), ours.readability_text(page)
            old[ref.stem] = {"baseline": EXTRACTORS["baseline"][1](page),
                             "trafilatura-precision, else readability": r if count(p) < two_way * count(r) else p,
                             "loaders.html.extract": ours.extract(page)[1]}
            old[ref.stem] = {name: round(prf(text, reference)[2], 3) for name, text in old[ref.stem].items()}

    texts["loaders.html.extract"], texts["as stored (with_date)"] = shipped_text, stored_text

    results = {name: {"about": about[name], "ms_per_page": round(ms[name], 1),
                      **{part: {k: round(v, 4) for k, v in mean_scores(texts[name], truth, split[part]).items()}
                         for part in ("tune", "holdout")},
                      "all": {k: round(v, 4) for k, v in mean_scores(texts[name], truth, keys).items()}}
               for name in texts}
    per_page = {key: {"half": half(key), **{name: round(prf(texts[name][key], truth[key])[2], 4)
                                            for name in ("baseline", "loaders.html.extract")}} for key in keys}
    report = {"pages": len(keys), "tune": len(split["tune"]), "holdout": len(split["holdout"]),
              "load_average": os.getloadavg()[0],
              "versions": {name: version(name) for name in ("trafilatura", "readability-lxml", "html2text")},
              "ratios_chosen_on_tune": {k: list(v) for k, v in chosen_ratios.items()},
              "shipped_ratios": list(shipped), "results": results, "old_six_pages_f1": old, "per_page_f1": per_page}
    if tuple(chosen_ratios["cascade (loaders.html)"]) != shipped:
        print(f"NOTE: the tune half now chooses {chosen_ratios['cascade (loaders.html)']}, loaders.html ships {shipped}")

    lines = ["# HTML article extraction (bench/html_extraction.py)", "",
             f"{len(keys)} pages of Zyte's article-extraction benchmark (bench/data/html/zyte), none of them in "
             f"../shared or used to tune before: {len(split['tune'])} tune, {len(split['holdout'])} holdout "
             "(by sha256 of the page id). Ratios of combinations are chosen on tune only.", "",
             "Token F1: per page, bag of lower-cased \\w+ tokens (multiset overlap) against the hand-made articleBody, "
             "then the mean over pages; P and R likewise. zyte F1: the benchmark's own 4-gram shingle measure "
             "(F1 of mean P and mean R), comparable with its README. ms/page on this shared 2-core machine "
             f"(load {report['load_average']:.1f}); a combination's is the sum of its parts'. "
             f"trafilatura {version('trafilatura')}, readability-lxml {version('readability-lxml')}, "
             f"html2text {version('html2text')}.", "",
             "| extractor | tune F1 | tune P | tune R | holdout F1 | holdout P | holdout R | holdout zyte F1 | ms/page |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in results.items():
        t, h = row["tune"], row["holdout"]
        lines.append(f"| {name} | {t['f1']:.3f} | {t['precision']:.3f} | {t['recall']:.3f} | **{h['f1']:.3f}** | "
                     f"{h['precision']:.3f} | {h['recall']:.3f} | {h['zyte_f1']:.3f} | {row['ms_per_page']:.0f} |")
    chosen, before = results["loaders.html.extract"], results["baseline"]
    lines += ["", f"Chosen for loaders.html: the cascade. On the tune half it ties the best combination "
              "(trafilatura-precision, else readability), and unlike that one it holds on the six pages tuned on "
              "before (last table: there the precise text of mozilla-1, kept by the simpler rule, lacks a third "
              "of the article). Holdout token F1 "
              f"{chosen['holdout']['f1']:.3f} (the issue's target: >= 0.96), against {before['holdout']['f1']:.3f} "
              "for the extractor it replaces. Its ms/page is end to end, the page's title included. The loader "
              "stores the same text after a line with the page's date, which the hand-marked article leaves out: "
              f"{results['as stored (with_date)']['holdout']['f1']:.3f} ('as stored')."]
    lines += ["", "What each row is:", ""] + [f"- **{name}**: {row['about']}" for name, row in results.items()]
    if old:
        names = list(next(iter(old.values())))
        lines += ["", "The six pages tuned on before (../shared/corpus/html, Readability's text as reference; "
                  "tests/test_loaders.py asks a mean >= 0.93):", "",
                  "| page | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        lines += [f"| {page} | " + " | ".join(f"{row[n]:.3f}" for n in names) + " |" for page, row in old.items()]
        lines.append("| mean | " + " | ".join(f"{statistics.mean(r[n] for r in old.values()):.3f}" for n in names) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "html.md").write_text("\n".join(lines) + "\n")
    (args.out / "html.json").write_text(json.dumps(report, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
