"""ROUGE (google-research rouge-score) and BLEU (sacrebleu), each with a bootstrap 95% interval.

Every number is the library's own: ROUGE per pair from `RougeScorer(use_stemmer=True)` on 0-1,
aggregated as the mean over pairs; BLEU is `sacrebleu.corpus_bleu` with its defaults on 0-100,
plus the mean of `sacrebleu.sentence_bleu` (effective order) per pair.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

import numpy as np
import sacrebleu
from nltk.stem import porter
from rouge_score import rouge_scorer, tokenizers

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
PARTS = ("precision", "recall", "fmeasure")
TOKENIZERS = ("default", "unicode")
N_BOOTSTRAP = 1000


class UnicodeTokenizer(tokenizers.Tokenizer):
    """rouge-score's tokenizer keeps only [a-z0-9]; this one keeps every script.

    A token is a run of letters, combining marks and digits (Unicode categories L, M, N), so
    Devanagari vowel signs stay inside their word (Python's `\\w` would split them off). CJK
    ideographs and kana become one token each, since those scripts do not separate words.
    Latin-script words get the same Porter stemming (> 3 characters) as the default tokenizer.
    Hand-written because rouge-score ships no Unicode tokenizer.
    """

    def __init__(self, use_stemmer: bool = True):
        self._stemmer = porter.PorterStemmer() if use_stemmer else None

    def tokenize(self, text: str) -> list[str]:
        tokens, word = [], []
        for char in unicodedata.normalize("NFC", text.casefold()):
            if _is_cjk(char):
                if word:
                    tokens.append("".join(word))
                    word = []
                tokens.append(char)
            elif unicodedata.category(char)[0] in "LMN":
                word.append(char)
            elif word:
                tokens.append("".join(word))
                word = []
        if word:
            tokens.append("".join(word))
        if self._stemmer:
            tokens = [self._stemmer.stem(t) if len(t) > 3 and t.isascii() else t for t in tokens]
        return tokens


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x3040 <= code <= 0x30FF
            or 0xF900 <= code <= 0xFAFF or 0x20000 <= code <= 0x2FA1F)


def rouge_scorer_for(tokenizer: str = "default") -> rouge_scorer.RougeScorer:
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; choose one of {', '.join(TOKENIZERS)}")
    custom = UnicodeTokenizer() if tokenizer == "unicode" else None
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True, tokenizer=custom)


def bootstrap_interval(values, n_resamples: int = N_BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of the mean, resampling pairs with replacement."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


@dataclass
class PairScores:
    """Per-pair values: rouge[type][part] is a list over pairs; sentence_bleu too."""

    rouge: dict[str, dict[str, list[float]]]
    sentence_bleu: list[float]


def score_pairs(predictions: list[str], references: list[str], tokenizer: str = "default") -> PairScores:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    scorer = rouge_scorer_for(tokenizer)
    rouge = {t: {p: [] for p in PARTS} for t in ROUGE_TYPES}
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)  # rouge-score's order: (target, prediction)
        for t in ROUGE_TYPES:
            for p in PARTS:
                rouge[t][p].append(getattr(scores[t], p))
    bleu = [sacrebleu.sentence_bleu(p, [r]).score for p, r in zip(predictions, references)]
    return PairScores(rouge=rouge, sentence_bleu=bleu)


@dataclass
class MetricsReport:
    n: int
    rouge: dict[str, dict[str, float]]  # type -> part -> mean over pairs
    rouge_ci: dict[str, dict[str, tuple[float, float]]]
    bleu: float  # corpus BLEU
    bleu_ci: tuple[float, float]
    sentence_bleu: float  # mean sentence BLEU (effective order)
    sentence_bleu_ci: tuple[float, float]
    tokenizer: str = "default"
    pairs: PairScores | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        out: dict = {t: dict(self.rouge[t]) for t in ROUGE_TYPES}
        out["bleu"] = self.bleu
        out["n"] = self.n
        out["sentence_bleu"] = self.sentence_bleu
        out["tokenizer"] = self.tokenizer
        out["ci95"] = {t: {p: list(self.rouge_ci[t][p]) for p in PARTS} for t in ROUGE_TYPES}
        out["ci95"]["bleu"] = list(self.bleu_ci)
        out["ci95"]["sentence_bleu"] = list(self.sentence_bleu_ci)
        return out

    def table(self) -> str:
        lines = [f"n = {self.n} pairs (tokenizer: {self.tokenizer}); 95% bootstrap intervals in brackets",
                 f"{'metric':<10} {'precision':>24} {'recall':>24} {'F1':>24}"]
        for t in ROUGE_TYPES:
            cells = [f"{self.rouge[t][p]:.4f} [{self.rouge_ci[t][p][0]:.4f}, {self.rouge_ci[t][p][1]:.4f}]"
                     for p in PARTS]
            lines.append(f"{t:<10} " + " ".join(f"{c:>24}" for c in cells))
        lines.append(f"BLEU (corpus)        {self.bleu:.2f} [{self.bleu_ci[0]:.2f}, {self.bleu_ci[1]:.2f}]")
        lines.append(f"BLEU (sentence mean) {self.sentence_bleu:.2f} "
                     f"[{self.sentence_bleu_ci[0]:.2f}, {self.sentence_bleu_ci[1]:.2f}]")
        return "\n".join(lines)


def compute_metrics(predictions: list[str], references: list[str], tokenizer: str = "default",
                    n_bootstrap: int = N_BOOTSTRAP) -> MetricsReport:
    """ROUGE-1/2/L/Lsum and BLEU for aligned prediction/reference lists, with 95% intervals."""
    if not predictions:
        raise ValueError("no pairs to score")
    pairs = score_pairs(predictions, references, tokenizer)
    rouge = {t: {p: float(np.mean(pairs.rouge[t][p])) for p in PARTS} for t in ROUGE_TYPES}
    rouge_ci = {t: {p: bootstrap_interval(pairs.rouge[t][p], n_bootstrap) for p in PARTS} for t in ROUGE_TYPES}
    # sacrebleu's own bootstrap (seeded by SACREBLEU_SEED, default 12345) gives mean +- half-width;
    # it exposes them only as Score._mean/_ci (format() rounds them to 2 places).
    corpus = sacrebleu.BLEU().corpus_score(predictions, [references], n_bootstrap=max(n_bootstrap, 2))
    bleu_ci = ((max(0.0, corpus._mean - corpus._ci), min(100.0, corpus._mean + corpus._ci)) if n_bootstrap > 1
               else (corpus.score, corpus.score))
    return MetricsReport(
        n=len(predictions), rouge=rouge, rouge_ci=rouge_ci,
        bleu=float(corpus.score), bleu_ci=tuple(float(x) for x in bleu_ci),
        sentence_bleu=float(np.mean(pairs.sentence_bleu)),
        sentence_bleu_ci=bootstrap_interval(pairs.sentence_bleu, n_bootstrap),
        tokenizer=tokenizer, pairs=pairs,
    )
