"""The Arena tab (blind A/B battles, votes, leaderboard) and the Evaluate tab (score variants).

app.py calls `build_arena_tab(settings, registry, store)` and `build_eval_tab(settings, registry)`
inside `with gr.Tab(...)`. Inputs carry elem_ids so browser tests and users' scripts can find them.
"""
from __future__ import annotations

import logging
import random
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gradio as gr

from chatapp import rag
from chatapp.adapters import CARD_FILE, adapter_folders
from chatapp.generation import GenerationSettings
from eval.answers import evaluate, read_questions
from eval.arena import AlreadyVoted, ArenaStore, Battle
from eval.ratings import leaderboard, style_control, win_rate_figure
from eval.score import FEW_EXAMPLES, PAIRED_METRICS, ScoreConfig, score
from loaders.store import get_store

log = logging.getLogger(__name__)

VOTES = {  # button label -> FastChat winner
    "A is better": "model_a",
    "B is better": "model_b",
    "Tie": "tie",
    "Both are bad": "tie (bothbad)",
}
VOTE_IDS = ("vote-a", "vote-b", "vote-tie", "vote-bad")
VOTE_WORDS = {"model_a": "A is better", "model_b": "B is better", "tie": "Tie", "tie (bothbad)": "Both are bad"}
LEADERBOARD_HEADERS = ["Rank", "Model", "BT rating", "BT 95% CI", "Elo", "Elo 95% CI", "Battles", "Wins/Ties/Losses",
                       "Style-controlled BT", "Style rank"]
# From this many decisive votes the tab offers to train a variant on them (finetune --method dpo --from_arena
# skips ties and "both bad" the same way); fewer pairs teach a LoRA adapter nothing measurable.
TRAIN_FROM_VOTES = 8
TRAIN_HINT = ("**Train a variant from {n} votes:** in the **Fine-tune** tab pick method *dpo* and tick *From arena "
              "votes*, or run `python -m finetune --method dpo --from_arena --name NAME`. Each vote's winning answer "
              "is the chosen one and the losing answer the rejected one; ties, “both bad” and battles answered from "
              "your documents are skipped.")
STYLE_ROUNDS = 200  # bootstrap rounds of the style fit in the tab: ~0.4 s per vote instead of ~2 s at 1000

NEED_ADAPTER = """**The arena needs at least two variants, and only `{found}` exists.**
A battle pits two variants of the model against each other: the base model and the adapters you trained.
Make an adapter from a dataset of instruction/answer pairs, then come back (no restart needed):

```
python -m finetune --data FILE --name NAME
```
or use the **Fine-tune** tab. Adapters live in `{adapters}`."""

HOW_IT_WORKS = ("Type a prompt: two different variants ({variants}) are drawn at random and answer as "
                "**Model A** and **Model B**. Vote for the better answer; the names are revealed after your vote, "
                "and each battle takes one vote.")


def _answer_texts(prompt: str, variant: str, registry, generation, use_rag: bool):
    """The answer so far, growing: plain generation, or the grounded answer with its sources."""
    if not use_rag:
        text = ""
        for piece in registry.stream([{"role": "user", "content": prompt}], variant=variant, generation=generation):
            text += piece
            yield text
        return
    for snapshot in rag.answer(prompt, [], registry=registry, variant=variant, generation=generation):
        # The variant's own words, even where the chat shows the evidence quote instead: a vote judges the
        # variant (both would otherwise show the same quote), and the check says what no source holds.
        text = snapshot.model_answer or snapshot.text
        if snapshot.done and snapshot.unsupported:
            text += "\n\n⚠ Not in any source: " + ", ".join(snapshot.unsupported)
        if snapshot.done and snapshot.model_answer:  # the chat showed this quote instead of the answer
            text += f"\n\n⚠ Not backed by the sources. {snapshot.answer}"  # "From FILE, p. N: “…”"
        if snapshot.done and snapshot.sources:
            text += "\n\nSources: " + "; ".join(
                f"[{s.number}] {s.title or s.source}" + (f", {s.location}" if s.location else "") for s in snapshot.sources)
        yield text


def leaderboard_rows(store: ArenaStore) -> list[list]:
    battles = [asdict(b) for b in store.battles()]
    rows = leaderboard(battles)
    style = style_control(battles, rounds=STYLE_ROUNDS) if battles else None

    def styled(model: str) -> list:
        if style is None:
            return ["", ""]
        low, high = style.ci[model]
        return [f"{style.ratings[model]:.1f} [{low:.0f}, {high:.0f}]", style.rank[model]]

    return [[r.rank, r.model, round(r.bt, 1), f"[{r.bt_low:.0f}, {r.bt_high:.0f}]", round(r.elo, 1),
             f"[{r.elo_low:.0f}, {r.elo_high:.0f}]", r.battles, f"{r.wins}/{r.ties}/{r.losses}", *styled(r.model)]
            for r in rows]


def train_hint(store: ArenaStore) -> str:
    """'Train a variant from N votes' once there are enough decisive votes, else nothing."""
    # battles answered from documents teach no pairs (finetune/preference.py skips them)
    n = sum(b.winner in ("model_a", "model_b") and not b.rag for b in store.battles())
    return TRAIN_HINT.format(n=n) if n >= TRAIN_FROM_VOTES else ""


def _win_plot(store: ArenaStore):
    battles = [asdict(b) for b in store.battles()]
    if not battles:
        return None
    order = [r.model for r in leaderboard(battles, rounds=100)]
    return win_rate_figure(battles, order)


def build_arena_tab(settings, registry, store: ArenaStore | None = None, generation=None, tab=None) -> dict:
    """Build the Arena inside the current Blocks context; returns its components by name. With its `tab`,
    the variants and the leaderboard are read again each time the tab is opened."""
    store = store or ArenaStore(settings.arena_db)
    generation = generation or GenerationSettings()

    def intro() -> str:
        variants = registry.variants()
        if len(variants) < 2:
            return NEED_ADAPTER.format(found="`, `".join(variants), adapters=settings.adapters_dir)
        return HOW_IT_WORKS.format(variants=", ".join(variants))

    info = gr.Markdown(intro, elem_id="arena-info")
    with gr.Row():
        # lines=1: Gradio submits on Enter only in a one-line box (with lines>1 Enter adds a newline and
        # only Shift+Enter submits); max_lines lets a pasted multi-line prompt grow, Shift+Enter adds a line.
        prompt = gr.Textbox(label="Prompt", placeholder="Ask both models something… (Enter starts the battle)",
                            lines=1, max_lines=8, scale=5, elem_id="arena-prompt")
        with gr.Column(scale=1, min_width=160):
            go = gr.Button("Battle", variant="primary", elem_id="arena-go")
            use_rag = gr.Checkbox(label="Answer from my documents", value=False, elem_id="arena-rag")
    with gr.Row(equal_height=True):
        answer_a = gr.Textbox(label="Model A", lines=10, max_lines=20, interactive=False, elem_id="arena-model-a")
        answer_b = gr.Textbox(label="Model B", lines=10, max_lines=20, interactive=False, elem_id="arena-model-b")
    with gr.Row():
        vote_buttons = [gr.Button(label, interactive=False, elem_id=elem_id)
                        for label, elem_id in zip(VOTES, VOTE_IDS)]
    reveal = gr.Markdown("", elem_id="arena-reveal")
    battle_state = gr.State(None)

    gr.Markdown("### Leaderboard\nBradley–Terry (maximum likelihood) and online Elo (K=4) on the 400/1000 scale, "
                "with bootstrap 95% intervals; rank = 1 + the number of variants whose lower bound is above this "
                "one's upper bound. *Style-controlled BT* is FastChat's style control: the same fit with answer "
                "length, headers, lists and bold as covariates, so a variant that only writes longer or more "
                "decorated answers does not rank first.")
    board = gr.Dataframe(lambda: leaderboard_rows(store), headers=LEADERBOARD_HEADERS, interactive=False,
                         elem_id="leaderboard")
    plot = gr.Plot(lambda: _win_plot(store), label="Pairwise win rate (row beats column)", elem_id="arena-winrate")
    refresh = gr.Button("Refresh leaderboard", size="sm", elem_id="arena-refresh")
    hint = gr.Markdown(lambda: train_hint(store), elem_id="arena-train-hint")

    locked = [gr.update(interactive=False)] * len(vote_buttons)

    def run_battle(text: str, from_documents: bool):
        text = (text or "").strip()
        if not text:
            raise gr.Error("Type a prompt first.")
        variants = registry.variants()
        if len(variants) < 2:
            yield (None, "", "", intro(), "", gr.update(interactive=True), *locked)
            return
        model_a, model_b = random.sample(variants, 2)  # two different variants, on random sides
        battle = {"question_id": uuid.uuid4().hex, "model_a": model_a, "model_b": model_b, "prompt": text,
                  "answer_a": "", "answer_b": "", "rag": bool(from_documents), "done": False}
        yield (battle, "", "", intro(), "", gr.update(interactive=False), *locked)
        # One base model serves every variant, so the two answers are generated one after the other.
        try:
            for side in ("a", "b"):
                for so_far in _answer_texts(text, battle[f"model_{side}"], registry, generation, battle["rag"]):
                    battle[f"answer_{side}"] = so_far
                    yield (battle, battle["answer_a"], battle["answer_b"], gr.skip(), "", gr.skip(), *locked)
        except Exception as exc:  # an adapter deleted meanwhile, a broken adapter folder, a failed generation
            log.exception("the battle's answer failed")
            reason = str(exc).strip("'\"")  # a KeyError's message comes quoted
            message = f"This battle stopped: {reason}"
            gr.Warning(message)
            # Battle is enabled again (it stayed greyed out after an error) and nothing can be voted on.
            yield (None, battle["answer_a"], battle["answer_b"], gr.skip(), message, gr.update(interactive=True),
                   *locked)
            return
        battle["done"] = True
        yield (battle, battle["answer_a"], battle["answer_b"], gr.skip(),
               "Which answer is better? Vote to see which variant wrote each.", gr.update(interactive=True),
               *[gr.update(interactive=True)] * len(vote_buttons))

    # Named API endpoints (Gradio's "Use via API"): scripts and bench/soak.py battle and vote as the page does.
    go.click(run_battle, [prompt, use_rag], [battle_state, answer_a, answer_b, info, reveal, go, *vote_buttons],
             api_name="battle")
    prompt.submit(run_battle, [prompt, use_rag], [battle_state, answer_a, answer_b, info, reveal, go, *vote_buttons],
                  api_name=False)

    def make_vote(winner: str):
        def vote(battle):
            if not battle or not battle.get("done"):
                raise gr.Error("Run a battle first, and let both answers finish.")
            if battle.get("voted"):
                raise gr.Error("This battle already has its vote. Start a new battle.")
            try:
                # Committed (fsynced) before the page is told: a revealed vote survives a crash.
                store.record_vote(Battle(model_a=battle["model_a"], model_b=battle["model_b"], winner=winner,
                                         prompt=battle["prompt"], answer_a=battle["answer_a"],
                                         answer_b=battle["answer_b"], question_id=battle["question_id"],
                                         rag=battle["rag"]))
            except AlreadyVoted:
                raise gr.Error("This battle already has its vote. Start a new battle.") from None
            battle = {**battle, "voted": True}
            message = (f"**Model A** was **{battle['model_a']}**, **Model B** was **{battle['model_b']}**. "
                       f"You voted: {VOTE_WORDS[winner]}. Vote saved; type a new prompt for the next battle.")
            return (battle, message, *locked, leaderboard_rows(store), _win_plot(store), train_hint(store))
        return vote

    for button, winner, elem_id in zip(vote_buttons, VOTES.values(), VOTE_IDS):
        button.click(make_vote(winner), [battle_state], [battle_state, reveal, *vote_buttons, board, plot, hint],
                     concurrency_limit=None, api_name=elem_id.replace("-", "_"))  # SQLite serialises writers; votes need not queue behind generation
    def reread():
        return leaderboard_rows(store), _win_plot(store), intro(), train_hint(store)

    refresh.click(reread, None, [board, plot, info, hint])
    if tab is not None:  # an adapter trained in the Fine-tune tab meanwhile: no "only base exists" left showing
        tab.select(reread, None, [board, plot, info, hint], queue=False)
    return {"prompt": prompt, "go": go, "answer_a": answer_a, "answer_b": answer_b, "votes": vote_buttons,
            "reveal": reveal, "leaderboard": board, "plot": plot, "state": battle_state, "train_hint": hint}


class BackgroundRun:
    """One run of a scoring section at a time, on a thread of its own. A run inside the click's event was lost
    to a reload of the page (and a second click queued behind it, unseen); this one goes on, and the section's
    timer draws its progress and then its result on any page, a reloaded one included."""

    def __init__(self):
        self.state = "idle"  # idle | running | done | failed
        self.id = 0          # which run: a page draws each finished run's result once
        self.fraction, self.message, self.error = 0.0, "", ""
        self.result: Any = None
        self._lock = threading.Lock()

    def start(self, work: Callable[[Callable[[float, str], None]], Any]) -> None:
        """Run `work(report)` in the background; its return value is the result the page draws."""
        with self._lock:
            if self.state == "running":
                raise gr.Error("A run is still going: wait for it to finish.")
            self.state, self.fraction, self.message, self.error, self.result = "running", 0.0, "starting", "", None
            self.id += 1
        threading.Thread(target=self._run, args=(work,), name="eval-run", daemon=True).start()

    def _run(self, work) -> None:
        try:
            self.result = work(self._report)
            self.state = "done"
        except Exception as error:  # gr.Error and the scorer's ValueErrors alike: one line in the tab
            self.error = " ".join(str(getattr(error, "message", error)).split()) or type(error).__name__
            self.state = "failed"
            log.warning("evaluation run failed: %s", self.error)

    def _report(self, fraction: float, message: str) -> None:
        self.fraction, self.message = fraction, message

    def status(self) -> str:
        if self.state == "running":
            return f"**Running** ({self.fraction:.0%}): {self.message}"
        return f"**Failed:** {self.error}" if self.state == "failed" else ""

    def draw(self, page: dict, outputs: int) -> tuple:
        """The tick's update: the status line, then `outputs` result values (skipped until a run finishes,
        and once this page has drawn it), then the timer's state."""
        if self.state == "idle" or (self.state != "running" and page.get("drawn") == self.id):
            return (gr.skip(),) * (1 + outputs) + (gr.Timer(active=False),)
        if self.state == "running":
            return (self.status(),) + (gr.skip(),) * outputs + (gr.Timer(active=True),)
        page["drawn"] = self.id
        results = tuple(self.result) if self.state == "done" else (gr.skip(),) * outputs
        return (self.status(), *results, gr.Timer(active=False))


def build_eval_tab(settings, registry, tab=None) -> dict:
    """Score variants on an uploaded dataset: `python -m eval score`, run in the background with its progress shown."""
    def adapter_names() -> list[str]:  # those with a card, which names the records they held out
        return [name for name, folder in adapter_folders(settings).items() if (folder / CARD_FILE).is_file()]

    gr.Markdown("Score variants against reference answers on a held-out dataset (Alpaca instruction/input/output, "
                "chat `messages`, or ShareGPT `conversations`; .json or .jsonl). Generation is greedy, so scores "
                "are reproducible. ROUGE is F1 on 0–1, BLEU on 0–100, with bootstrap 95% intervals.")
    with gr.Row():
        data = gr.File(label="Dataset", file_types=[".json", ".jsonl"], elem_id="eval-data")
        with gr.Column():
            variants = gr.CheckboxGroup(choices=registry.variants(), value=["base"], label="Variants",
                                        elem_id="eval-variants")
            held_out_by = gr.Dropdown(["", *adapter_names()], value="", label="Held out by (instead of a file)",
                                      info="the records this adapter set aside and never trained on",
                                      elem_id="eval-held-out")
            limit = gr.Number(value=20, precision=0, minimum=1, label="Records to score (first N)", elem_id="eval-limit")
            max_new = gr.Slider(8, 512, value=128, step=8, label="Max new tokens", elem_id="eval-max-new-tokens")
            tokenizer = gr.Radio(["default", "unicode"], value="default", label="ROUGE tokenizer",
                                 info="'unicode' for Hindi, Greek or any non-English text (the default keeps only a-z, 0-9)",
                                 elem_id="eval-tokenizer")
            run = gr.Button("Score", variant="primary", elem_id="eval-run")
    table = gr.Dataframe(headers=["Variant", "ROUGE-1", "ROUGE-2", "ROUGE-L", "ROUGE-Lsum", "BLEU", "Empty",
                                  "Too long", "Too short", "Looping"], interactive=False, elem_id="eval-table")
    status = gr.Markdown(elem_id="eval-status")
    verdicts = gr.Markdown(elem_id="eval-verdicts")
    predictions = gr.File(label="Per-example answers (JSONL)", elem_id="eval-predictions")
    scoring = BackgroundRun()
    drawn = gr.State(dict)
    timer = gr.Timer(1.0, active=True)  # the first tick draws a run going on or finished before a reload

    def run_score(file, held_out, chosen, n, tokens, tok):
        if not file and not held_out:
            raise gr.Error("Upload a dataset file first, or pick an adapter whose held-out records to score.")
        if file and held_out:
            raise gr.Error("Give one of them: remove the file, or set 'Held out by' back to empty.")
        if not chosen:
            raise gr.Error("Pick at least one variant.")
        config = ScoreConfig(data=Path(file if isinstance(file, str) else file.name) if file else None,
                             held_out_of=held_out or None, variants=list(chosen),
                             limit=int(n) if n else None, max_new_tokens=int(tokens), tokenizer=tok,
                             predictions_out=Path(tempfile.mkdtemp()) / "predictions.jsonl")
        scoring.start(lambda report: score_outputs(config, held_out, report))
        return scoring.status(), gr.Timer(active=True)

    def score_outputs(config, held_out, report) -> tuple:
        result = score(config, registry=registry,
                       progress=lambda done, total, v: report(done / total, f"generating {v}: {done}/{total}"))
        rows = []
        for name, v in result.variants.items():
            m, e = v.metrics, v.errors
            rows.append([name, *(f"{m.rouge[t]['fmeasure']:.3f} [{m.rouge_ci[t]['fmeasure'][0]:.3f}, "
                                 f"{m.rouge_ci[t]['fmeasure'][1]:.3f}]" for t in ("rouge1", "rouge2", "rougeL", "rougeLsum")),
                         f"{m.bleu:.1f} [{m.bleu_ci[0]:.1f}, {m.bleu_ci[1]:.1f}]",
                         e["empty"]["count"], e["too_long"]["count"], e["too_short"]["count"], e["repetitive"]["count"]])
        lines = [f"- **{c['a']}** vs **{c['b']}** on {c['metric']}: difference {c['mean_diff']:+.3f} "
                 f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] → "
                 + (f"**{c['winner']}** is better" if c["winner"] else "no significant difference")
                 + (f" (only {c['n']} examples: a hint, not a test)" if c["n"] < FEW_EXAMPLES else "")
                 for c in result.comparisons if c["metric"] in ("rougeL", PAIRED_METRICS[-1])]
        scored = f"of {Path(config.data).name}" if config.data else f"held out by {held_out}"
        n_scored = next(iter(result.variants.values())).metrics.n
        lines = [f"Scored {n_scored} records {scored}.", *(f"- ⚠ {w}" for w in result.warnings),
                 *(lines or ["Pick two or more variants for a paired bootstrap comparison."])]
        return rows, "\n".join(lines), result.predictions

    run.click(run_score, [data, held_out_by, variants, limit, max_new, tokenizer], [status, timer])
    timer.tick(lambda page: scoring.draw(page, 3), drawn, [status, table, verdicts, predictions, timer],
               show_progress="hidden")
    refresh = gr.Button("Rescan variants", size="sm", elem_id="eval-rescan")

    def rescan():
        return gr.update(choices=registry.variants()), gr.update(choices=["", *adapter_names()])

    refresh.click(rescan, None, [variants, held_out_by])
    if tab is not None:  # adapters trained since the page loaded are offered without a rescan
        tab.select(rescan, None, [variants, held_out_by], queue=False)
    rag_parts = build_rag_eval(settings, registry, variants)
    return {"run": run, "table": table, "variants": variants, **rag_parts}


RAG_COLUMNS = ["variant", "questions", "hit@1", "hit@4", "hit@20", "mrr", "right_source", "fact_in_quote",
               "fact_stated", "unsupported_flagged", "invented_unflagged", "no_source_questions_with_sources"]


def build_rag_eval(settings, registry, variants) -> dict:
    """Grounded answers on the user's own store: `python -m eval rag`, in the background, with its progress shown."""
    gr.Markdown("### Answers from your documents\nUpload questions about the stored documents (JSONL: "
                '`{"question", "answer", "source", "page"}`, the answer as the document words it; or pairs from '
                "`python -m finetune synth`). Each is asked as in Chat, and scored: is the passage holding the "
                "answer found (hit@k, MRR) and listed, is the answer inside a quote, does the answer state it, "
                "and are figures no source holds flagged.")
    with gr.Row():
        questions = gr.File(label="Questions", file_types=[".json", ".jsonl"], elem_id="rag-eval-questions")
        with gr.Column():
            limit = gr.Number(value=20, precision=0, minimum=1, label="Questions to ask (first N)", elem_id="rag-eval-limit")
            run = gr.Button("Ask and score", variant="primary", elem_id="rag-eval-run")
    status = gr.Markdown(elem_id="rag-eval-status")
    table = gr.Dataframe(headers=RAG_COLUMNS, interactive=False, elem_id="rag-eval-table")
    asking = BackgroundRun()
    drawn = gr.State(dict)
    timer = gr.Timer(1.0, active=True)

    def run_rag(file, chosen, n):
        if not file:
            raise gr.Error("Upload a question file first.")
        if not chosen:
            raise gr.Error("Pick at least one variant above.")
        try:
            asked = read_questions(file if isinstance(file, str) else file.name)[: int(n) if n else None]
        except (ValueError, OSError) as error:
            raise gr.Error(str(error)) from None
        store = get_store(settings)
        if store.is_empty() and not store.ingesting():
            raise gr.Error("No documents are stored yet: add some in the Documents tab.")
        asking.start(lambda report: rag_outputs(asked, store, list(chosen), report))
        return asking.status(), gr.Timer(active=True)

    def rag_outputs(asked, store, chosen, report) -> tuple:
        # A file dropped in the Documents tab just before is scored once stored, as the chat waits for it:
        # asked meanwhile, the questions met a store without it (or "no documents are stored yet").
        pending = store.ingesting()
        if pending:
            report(0.0, f"waiting for {', '.join(sorted(pending))} to be stored (Documents tab)")
            store.wait_until_stored()
        rows = []
        for variant in chosen:
            scored = evaluate(asked, store=store, registry=registry, settings=settings, variant=variant,
                              progress=lambda done, total, q, v=variant: report(done / max(total, 1), f"{v}: {q[:60]}"))
            summary = scored.summary()
            rows.append([summary.get(column) for column in RAG_COLUMNS])
        return (rows,)

    run.click(run_rag, [questions, variants, limit], [status, timer])
    timer.tick(lambda page: asking.draw(page, 1), drawn, [status, table, timer], show_progress="hidden")
    return {"rag_run": run, "rag_table": table}
