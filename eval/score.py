"""Scoring model variants on a held-out dataset: generate, score, find failure modes, compare.

`score(config)` generates every variant's answer for every record (greedy by default, so the
numbers are reproducible), computes ROUGE/BLEU with `eval.metrics`, flags answers that are
empty, far longer or shorter than the reference, or stuck in a loop, runs a paired bootstrap
between every two variants, and writes the per-example answers to a JSONL file a person can read.
"""
from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chatapp.datasets import file_sha256
from chatapp.adapters import adapter_folders, read_card
from eval.data import Example, held_out_examples, read_examples
from eval.metrics import ROUGE_TYPES, MetricsReport, compute_metrics

# An answer is "too long"/"too short" beyond these word-count ratios to its reference.
LONG_RATIO, SHORT_RATIO = 2.0, 0.5
# Share of repeated 4-grams above which an answer counts as a degenerate loop.
REPEAT_N, REPEAT_SHARE = 4, 0.3
PAIRED_METRICS = (*ROUGE_TYPES, "sentence_bleu")
# Below this many examples a bootstrap interval is too coarse to call a winner with confidence.
FEW_EXAMPLES = 10


@dataclass
class ScoreConfig:
    data: Path | None  # dataset file; None with held_out_of
    variants: list[str]
    held_out_of: str | None = None  # score on the records this adapter held out (from its card.json)
    template_vars: dict[str, str] = field(default_factory=dict)  # fill {{key}} placeholders in `data`
    rag: bool = False
    limit: int | None = None  # score only the first N records
    max_new_tokens: int = 128
    tokenizer: str = "default"  # ROUGE tokenizer: default | unicode
    predictions_out: Path | None = None  # default: DATA/runs/eval-score-<time>.jsonl
    n_bootstrap: int = 1000
    seed: int = 0


def repeated_ngram_share(text: str, n: int = REPEAT_N) -> float:
    """1 - distinct n-grams / all n-grams over whitespace words (0 for answers under n words)."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def answer_flags(answer: str, reference: str) -> list[str]:
    words, ref_words = len(answer.split()), max(len(reference.split()), 1)
    if not answer.strip():
        return ["empty"]
    flags = []
    if words > LONG_RATIO * ref_words:
        flags.append("too_long")
    if words < SHORT_RATIO * ref_words:
        flags.append("too_short")
    if repeated_ngram_share(answer) > REPEAT_SHARE:
        flags.append("repetitive")
    return flags


def error_analysis(answers: list[str], references: list[str], examples_shown: int = 3) -> dict:
    flags = [answer_flags(a, r) for a, r in zip(answers, references)]
    ratios = [len(a.split()) / max(len(r.split()), 1) for a, r in zip(answers, references)]
    out: dict = {"mean_length_ratio": float(np.mean(ratios)),
                 "mean_repeated_4gram_share": float(np.mean([repeated_ngram_share(a) for a in answers]))}
    for kind in ("empty", "too_long", "too_short", "repetitive"):
        hits = [i for i, f in enumerate(flags) if kind in f]
        out[kind] = {"count": len(hits), "rate": len(hits) / len(answers), "examples": hits[:examples_shown]}
    return out


def paired_bootstrap(a: list[float], b: list[float], n_resamples: int = 1000, seed: int = 0) -> dict:
    """Paired bootstrap over examples (Koehn 2004): resample example indices, recompute the mean
    difference a - b. `p_value` is two-sided; a variant "beats" the other when the 95% interval
    of the difference excludes 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = a - b
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    p = min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean()))
    return {"mean_diff": float(diff.mean()), "ci95": [float(low), float(high)], "p_value": float(p)}


@dataclass
class VariantResult:
    name: str
    answers: list[str]
    metrics: MetricsReport
    errors: dict
    seconds: float

    def per_example(self, metric: str) -> list[float]:
        if metric == "sentence_bleu":
            return self.metrics.pairs.sentence_bleu
        return self.metrics.pairs.rouge[metric]["fmeasure"]

    def summary(self) -> dict:
        m = self.metrics
        out: dict = {t: m.rouge[t]["fmeasure"] for t in ROUGE_TYPES}
        out["bleu"] = m.bleu
        out["sentence_bleu"] = m.sentence_bleu
        out["ci95"] = {**{t: list(m.rouge_ci[t]["fmeasure"]) for t in ROUGE_TYPES},
                       "bleu": list(m.bleu_ci), "sentence_bleu": list(m.sentence_bleu_ci)}
        out["n"] = m.n
        out["errors"] = self.errors
        out["seconds"] = round(self.seconds, 1)
        return out


@dataclass
class ScoreResult:
    data: str
    variants: dict[str, VariantResult]
    comparisons: list[dict] = field(default_factory=list)
    predictions: str | None = None
    rag: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"data": self.data, "rag": self.rag,
                "variants": {name: v.summary() for name, v in self.variants.items()},
                "comparisons": self.comparisons, "predictions": self.predictions, "warnings": self.warnings}

    def table(self) -> str:
        head = f"{'variant':<16}" + "".join(f"{c:>22}" for c in (*ROUGE_TYPES, "BLEU")) + f"{'empty':>7}{'long':>6}{'short':>6}{'loop':>6}"
        lines = [f"{self.data}: {next(iter(self.variants.values())).metrics.n} examples; ROUGE F1 (0-1), "
                 "corpus BLEU (0-100), 95% bootstrap intervals", *(f"warning: {w}" for w in self.warnings), head]
        for name, v in self.variants.items():
            m = v.metrics
            cells = [f"{m.rouge[t]['fmeasure']:.3f} [{m.rouge_ci[t]['fmeasure'][0]:.3f},{m.rouge_ci[t]['fmeasure'][1]:.3f}]"
                     for t in ROUGE_TYPES]
            cells.append(f"{m.bleu:.1f} [{m.bleu_ci[0]:.1f},{m.bleu_ci[1]:.1f}]")
            e = v.errors
            lines.append(f"{name:<16}" + "".join(f"{c:>22}" for c in cells)
                         + f"{e['empty']['count']:>7}{e['too_long']['count']:>6}{e['too_short']['count']:>6}{e['repetitive']['count']:>6}")
        for c in self.comparisons:
            if c["metric"] not in ("rougeL", "sentence_bleu"):
                continue
            verdict = f"{c['winner']} is better" if c["winner"] else "no significant difference"
            if c["n"] < FEW_EXAMPLES:
                verdict += f" (only {c['n']} examples: a hint, not a test)"
            lines.append(f"{c['a']} vs {c['b']} on {c['metric']}: diff {c['mean_diff']:+.4f} "
                         f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}], p={c['p_value']:.3f}: {verdict}")
        if self.predictions:
            lines.append(f"per-example answers: {self.predictions}")
        return "\n".join(lines)


def _rag_answerer():
    """chatapp.rag.ask (the blocking grounded answer); scoring with --rag needs it."""
    try:
        from chatapp.rag import ask
    except ImportError as error:
        raise RuntimeError(f"--rag needs chatapp.rag, which is not available ({error})") from None
    return ask


def generate_answers(examples: list[Example], variant: str, registry, config: ScoreConfig,
                     progress: Callable[[int, int, str], None] | None = None) -> list[str]:
    from chatapp.generation import GenerationSettings

    generation = GenerationSettings(max_new_tokens=config.max_new_tokens)  # greedy by default
    rag = _rag_answerer() if config.rag else None
    answers = []
    for i, example in enumerate(examples):
        if rag is not None:
            answers.append(rag_answer_text(rag, example, variant, registry, generation))
        else:
            answers.append(registry.generate(example.messages, variant=variant, generation=generation).strip())
        if progress:
            progress(i + 1, len(examples), variant)
    return answers


def rag_answer_text(ask, example: Example, variant: str, registry, generation) -> str:
    """The grounded answer (retrieval from the ingested documents) for one record."""
    return ask(example.prompt, example.messages[:-1], registry=registry, variant=variant,
               generation=generation).text.strip()


def score(config: ScoreConfig, registry=None, settings=None,
          progress: Callable[[int, int, str], None] | None = None) -> ScoreResult:
    """Generate and score every variant on `config.data`; see the module docstring."""
    if not config.variants:
        raise ValueError("no variants given")
    if len(set(config.variants)) != len(config.variants):
        raise ValueError("a variant is listed twice")
    if registry is None:
        from chatapp.backends import make_registry

        registry = make_registry(settings)
    data, examples = load_examples(config, registry.settings)
    known = registry.variants()
    missing = [v for v in config.variants if v not in known]
    if missing:
        raise ValueError(f"unknown variant(s) {', '.join(missing)}; available: {', '.join(known)}"
                         " (make an adapter with `python -m finetune --data FILE --name NAME`)")
    references = [e.reference for e in examples]
    results: dict[str, VariantResult] = {}
    for variant in config.variants:
        started = time.perf_counter()
        answers = generate_answers(examples, variant, registry, config, progress)
        metrics = compute_metrics(answers, references, config.tokenizer, config.n_bootstrap)
        results[variant] = VariantResult(variant, answers, metrics, error_analysis(answers, references),
                                         time.perf_counter() - started)
    comparisons = []
    for a, b in itertools.combinations(config.variants, 2):
        for metric in PAIRED_METRICS:
            test = paired_bootstrap(results[a].per_example(metric), results[b].per_example(metric),
                                    config.n_bootstrap, config.seed)
            low, high = test["ci95"]
            winner = a if low > 0 else b if high < 0 else None
            comparisons.append({"a": a, "b": b, "metric": metric, **test, "winner": winner, "n": len(examples)})
    out = config.predictions_out or _default_predictions_path(registry)
    write_predictions(out, examples, results)
    warnings = trained_on_this_file(config, registry.settings) if config.held_out_of is None else []
    return ScoreResult(data, results, comparisons, str(out), config.rag, warnings)


def trained_on_this_file(config: ScoreConfig, settings) -> list[str]:
    """A warning for each adapter scored on the very file it was trained on (its card's sha256): most of
    those records are answers it learned, so it wins by recall, not by what it does on new questions."""
    digest = file_sha256(config.data)
    warnings = []
    for variant, folder in adapter_folders(settings).items():
        if variant not in config.variants:
            continue
        try:
            trained = read_card(folder)["data"]
        except (ValueError, KeyError, TypeError):  # no card (TypeError on None), or one without its data file
            continue
        if trained.get("sha256") == digest:
            warnings.append(f"{variant} was trained on this file ({trained.get('train_examples', 'most')} of its "
                            "records), so its scores here overstate it; score it on the records it held out "
                            f"(`python -m eval score --held-out-of {variant}`, or 'Held out by' in the Evaluate tab)")
    return warnings


def load_examples(config: ScoreConfig, settings) -> tuple[str, list[Example]]:
    """(description, examples) for a config: a dataset file, or an adapter's held-out records."""
    if config.held_out_of:
        path, examples = held_out_examples(Path(settings.adapters_dir) / config.held_out_of)
        data = f"{path} (held out by {config.held_out_of})"
    elif config.data is not None:
        examples, data = read_examples(config.data, config.template_vars), str(config.data)
    else:
        raise ValueError("give a dataset file or an adapter whose held-out records to use")
    return data, examples[: config.limit] if config.limit else examples


def _default_predictions_path(registry) -> Path:
    return Path(registry.settings.runs_dir) / f"eval-score-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"


def write_predictions(path: Path, examples: list[Example], results: dict[str, VariantResult]) -> None:
    """One JSON object per example: prompt, reference and each variant's answer, scores and flags."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i, example in enumerate(examples):
            row = {"index": i, "line": example.line, "prompt": example.prompt, "reference": example.reference,
                   "answers": {}}
            for name, v in results.items():
                row["answers"][name] = {
                    "text": v.answers[i],
                    **{t: v.metrics.pairs.rouge[t]["fmeasure"][i] for t in ROUGE_TYPES},
                    "sentence_bleu": v.metrics.pairs.sentence_bleu[i],
                    "flags": answer_flags(v.answers[i], example.reference),
                }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
