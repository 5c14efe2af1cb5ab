"""python -m eval: metrics, scoring variants, and the arena's ratings and export."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

TOKENIZER_HELP = (
    "ROUGE tokenizer. 'default' is rouge-score's own: lower-case, keeps only a-z and 0-9 (with Porter "
    "stemming), so any text in another script (Hindi, Greek, Chinese, accented letters) loses those "
    "words and can score 0. Use 'unicode' for non-English or mixed-script text: it keeps letters and "
    "marks of every script and splits CJK per character. Scores from different tokenizers are not "
    "comparable. BLEU always uses sacrebleu's default tokenizer (13a)."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval",
        description="Tell whether a fine-tune made the model better: reference-based scores (ROUGE, BLEU) "
                    "and blind A/B votes from the arena (Elo, Bradley-Terry).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("metrics", help="ROUGE-1/2/L/Lsum and BLEU between two text files",
                       description="Score predictions against references, one text per line (line i of "
                                   "one file pairs with line i of the other). ROUGE (rouge-score, stemmed) "
                                   "is on 0-1, BLEU (sacrebleu corpus BLEU) on 0-100; aggregates are means "
                                   "over pairs with bootstrap 95% intervals.")
    m.add_argument("--predictions", required=True, type=Path, help="model outputs, one per line")
    m.add_argument("--references", required=True, type=Path, help="reference texts, one per line")
    m.add_argument("--tokenizer", choices=("default", "unicode"), default="default", help=TOKENIZER_HELP)
    m.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals (default 1000)")
    m.add_argument("--json", action="store_true", help="print JSON: {rouge1: {precision, recall, fmeasure}, ..., bleu, n}")

    s = sub.add_parser("score", help="generate each variant's answers on a dataset and score them",
                       description="Generate every variant's answer for every record of a dataset (greedy, so "
                                   "reproducible), score against the reference answers, flag empty, too long/short "
                                   "and looping answers, and test each pair of variants with a paired bootstrap. "
                                   "Per-example answers go to a JSONL file. Dataset formats: Alpaca "
                                   "(instruction/input/output), chat 'messages', or ShareGPT 'conversations'; "
                                   ".json array or .jsonl.")
    s.add_argument("--data", type=Path, default=None, help="dataset file of records the adapters did not train on")
    s.add_argument("--held-out-of", metavar="NAME", default=None,
                   help="instead of --data: the records adapter NAME held out in training (its card.json names the "
                        "file, placeholders, test share and seed, and the same split is replayed)")
    s.add_argument("--template-vars", default=None, metavar="KEY=VALUE,...",
                   help="fill {{key}} placeholders in --data, e.g. 'name=Ada,author=Lovelace Labs' (as finetune does)")
    s.add_argument("--variants", required=True,
                   help="comma-separated: 'base' and/or adapter names from DATA/adapters/, e.g. base,identity")
    s.add_argument("--rag", action="store_true", help="answer with retrieval from the ingested documents")
    s.add_argument("--limit", type=int, default=None, help="score only the first N records")
    s.add_argument("--max-new-tokens", type=int, default=128, help="generation length cap (default 128)")
    s.add_argument("--tokenizer", choices=("default", "unicode"), default="default", help=TOKENIZER_HELP)
    s.add_argument("--predictions-out", type=Path, default=None,
                   help="where to write per-example answers (default DATA/runs/eval-score-TIME.jsonl)")
    s.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    s.add_argument("--json", action="store_true", help="print JSON: {variants: {NAME: {rouge1, ..., bleu, errors}}, comparisons}")

    g = sub.add_parser("rag", help="grounded answers on your own store: hit@k, MRR, right source, fact quoted/stated",
                       description="Ask each question of a question file against the documents in CHATAPP_DATA_DIR, "
                                   "as the Chat tab would, and measure retrieval (hit@1/4/20, MRR of the passage "
                                   "holding the answer), the right passage listed, the answer string inside an "
                                   "evidence quote and inside the answer, and figures flagged or invented. A line is "
                                   '{"question", "answer", "source", "page"} (answer: the exact string as the document '
                                   "has it; source: the stored file name) or an Alpaca record with source, as "
                                   "`python -m finetune synth` writes; a line with no answer and no source must get "
                                   "no sources (off-topic, small talk).")
    g.add_argument("--questions", required=True, type=Path, help="question file, .jsonl or a .json list")
    g.add_argument("--variants", default="base", help="comma-separated: base and/or adapter names (default base)")
    g.add_argument("--split", default=None, help="only questions whose split field is this (e.g. holdout)")
    g.add_argument("--limit", type=int, default=None, help="the first N questions only")
    g.add_argument("--max-new-tokens", type=int, default=96, help="answer length cap (default 96)")
    g.add_argument("--json", action="store_true", help="print one JSON object: {variants: {NAME: summary}, records}")

    a = sub.add_parser("arena", help="ratings and export of arena votes",
                       description="Work with the arena's votes (DATA/arena.sqlite, FastChat battle format).")
    arena = a.add_subparsers(dest="arena_command", required=True, metavar="ARENA_COMMAND")
    r = arena.add_parser("ratings", help="online Elo and Bradley-Terry ratings with bootstrap intervals",
                         description="Rate the votes in the arena database, or a JSONL file in FastChat's battle "
                                     "format (model_a, model_b, winner in model_a|model_b|tie|tie (bothbad)). Elo is "
                                     "FastChat's online Elo (K=4, in vote order); BT is the maximum-likelihood "
                                     "Bradley-Terry fit on the same 400/1000 scale; rank = 1 + the number of models "
                                     "whose lower bound is above this model's upper bound.")
    r.add_argument("--votes", type=Path, default=None, help="JSONL battles to rate instead of the database")
    r.add_argument("--rounds", type=int, default=1000, help="bootstrap rounds (at least 100; default 1000)")
    r.add_argument("--json", action="store_true",
                   help="print JSON: {elo: {MODEL: RATING}, bt: {MODEL: {rating, ci_low, ci_high, rank, battles}}, "
                        "style_control: {bt: {MODEL: {rating, ci_low, ci_high, rank}}, coefficients} or null}")
    e = arena.add_parser("export", help="write every vote as FastChat JSONL",
                         description="Write every voted battle to FILE.jsonl in FastChat's clean-battle format.")
    e.add_argument("--out", required=True, type=Path, help="output JSONL file")
    return parser


def _cmd_metrics(args) -> int:
    from eval.data import read_lines
    from eval.metrics import compute_metrics

    predictions, references = read_lines(args.predictions), read_lines(args.references)
    if len(predictions) != len(references):
        shorter = args.predictions if len(predictions) < len(references) else args.references
        raise ValueError(f"{shorter}:{min(len(predictions), len(references)) + 1}: file ends here, but "
                         f"{args.predictions} has {len(predictions)} lines and {args.references} has {len(references)}")
    if not predictions:
        raise ValueError(f"{args.predictions}: no lines to score")
    report = compute_metrics(predictions, references, args.tokenizer, args.bootstrap)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.table())
    return 0


def _cmd_score(args) -> int:
    from tqdm import tqdm

    from chatapp.settings import Settings
    from eval.score import ScoreConfig, score

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if (args.data is None) == (args.held_out_of is None):
        raise ValueError("give exactly one of --data FILE or --held-out-of NAME")
    template_vars = {}
    for pair in filter(str.strip, (args.template_vars or "").split(",")):
        if "=" not in pair:
            raise ValueError(f"--template-vars needs key=value pairs, got {pair!r}")
        key, value = pair.split("=", 1)
        template_vars[key.strip()] = value.strip()
    config = ScoreConfig(data=args.data, variants=variants, held_out_of=args.held_out_of,
                         template_vars=template_vars, rag=args.rag, limit=args.limit,
                         max_new_tokens=args.max_new_tokens, tokenizer=args.tokenizer,
                         predictions_out=args.predictions_out, n_bootstrap=args.bootstrap)
    from eval.score import load_examples

    settings = Settings.from_env()
    load_examples(config, settings)  # reject a bad file before loading the model
    bars: dict = {}

    def progress(done: int, total: int, variant: str) -> None:
        bar = bars.get(variant) or bars.setdefault(variant, tqdm(total=total, desc=f"generating {variant}", file=sys.stderr))
        bar.update(done - bar.n)
        if done == total:
            bar.close()

    result = score(config, settings=settings, progress=progress)
    print(json.dumps(result.to_json(), indent=2, ensure_ascii=False) if args.json else result.table())
    return 0


def _cmd_rag(args) -> int:
    from chatapp.backends import make_registry
    from chatapp.generation import GenerationSettings
    from chatapp.settings import Settings
    from eval.answers import evaluate, read_questions
    from loaders.store import get_store

    questions = read_questions(args.questions, args.split)[: args.limit]  # a bad file fails before the model loads
    if not questions:
        raise ValueError(f"{args.questions}: no questions" + (f" in split {args.split!r}" if args.split else ""))
    settings = Settings.from_env()
    registry = make_registry(settings)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in registry.variants()]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}; known: {', '.join(registry.variants())}")
    store = get_store(settings)
    try:
        if store.is_empty():
            raise ValueError(f"the store in {settings.data_dir} is empty: ingest documents first (python -m loaders ingest PATH)")
        reports = [evaluate(questions, store=store, registry=registry, settings=settings, variant=variant,
                            generation=GenerationSettings(max_new_tokens=args.max_new_tokens),
                            progress=lambda done, total, q, v=variant: print(f"{v}: {done}/{total}", end="\r", file=sys.stderr))
                   for variant in variants]
    finally:
        store.close()
    print(file=sys.stderr)
    if args.json:
        print(json.dumps({"variants": {r.variant: r.summary() for r in reports},
                          "records": {r.variant: r.to_json()["records"] for r in reports}}, ensure_ascii=False))
        return 0
    for report in reports:
        summary = report.summary()
        print(f"{report.variant}: " + ", ".join(f"{key} {value}" for key, value in summary.items() if key != "variant"))
    return 0


def _battles(args) -> list:
    from dataclasses import asdict

    from chatapp.settings import Settings
    from eval.arena import ArenaStore, read_battles_jsonl

    if args.votes is not None:
        if not args.votes.is_file():
            raise FileNotFoundError(f"{args.votes}: no such file")
        return read_battles_jsonl(args.votes)
    settings = Settings.from_env()
    return [asdict(b) for b in ArenaStore(settings.arena_db).battles()]


def _cmd_ratings(args) -> int:
    from eval.ratings import leaderboard, ratings_json, style_control

    if args.rounds < 100:
        raise ValueError("--rounds must be at least 100")
    battles = _battles(args)
    if not battles:
        raise ValueError("no votes yet: vote in the Arena tab, or pass --votes FILE.jsonl")
    if args.json:
        print(json.dumps(ratings_json(battles, args.rounds), indent=2))
        return 0
    print(f"{len(battles)} battles; 95% bootstrap intervals over {args.rounds} rounds")
    print(f"{'rank':>4}  {'model':<24}{'BT':>8}{'BT 95% CI':>20}{'Elo':>8}{'Elo 95% CI':>20}{'battles':>9}{'W/T/L':>14}")
    for r in leaderboard(battles, args.rounds):
        print(f"{r.rank:>4}  {r.model:<24}{r.bt:>8.1f}{f'[{r.bt_low:.0f}, {r.bt_high:.0f}]':>20}{r.elo:>8.1f}"
              f"{f'[{r.elo_low:.0f}, {r.elo_high:.0f}]':>20}{r.battles:>9}{f'{r.wins}/{r.ties}/{r.losses}':>14}")
    style = style_control(battles, args.rounds)
    if style is None:
        print("\nstyle control: not computed (some battles carry no answers to measure)")
        return 0
    print("\nstyle-controlled BT (FastChat style control: length, headers, lists, bold as covariates)")
    print(f"{'rank':>4}  {'model':<24}{'BT':>8}{'BT 95% CI':>20}")
    for model in sorted(style.ratings, key=lambda m: (style.rank[m], -style.ratings[m])):
        low, high = style.ci[model]
        print(f"{style.rank[model]:>4}  {model:<24}{style.ratings[model]:>8.1f}{f'[{low:.0f}, {high:.0f}]':>20}")
    print("coefficients: " + ", ".join(f"{k} {v:+.3f}" for k, v in style.coefficients.items()))
    return 0


def _cmd_export(args) -> int:
    from chatapp.settings import Settings
    from eval.arena import ArenaStore

    n = ArenaStore(Settings.from_env().arena_db).export(args.out)
    print(f"wrote {n} battles to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = _parser().parse_args(argv)
    handler = {"metrics": _cmd_metrics, "score": _cmd_score, "rag": _cmd_rag}.get(args.command)
    if handler is None:
        handler = {"ratings": _cmd_ratings, "export": _cmd_export}[args.arena_command]
    try:
        return handler(args)
    except (ValueError, OSError, KeyError, RuntimeError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
