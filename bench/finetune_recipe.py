"""Does the default fine-tuning recipe teach? Identity data, base model scored in the same run.

Data: ../shared/corpus/finetune/identity.json with {{name}}/{{author}} filled (Ada, Lovelace Labs); English
and Chinese records. Held out: the CLI's own split (--test_size 0.1, --seed 42), so the records the bench
scores are exactly the ones each run never trained on.

Parts (each a `python -m finetune` subprocess, as a user would type it, timed by wall clock):
  default  --data identity.json --name X --template_vars ...   (no other flag)
  common   the same plus --learning_rate 3e-4 --num_train_epochs 3 --per_device_train_batch_size 8
  dpo      --method dpo --data prefs.jsonl --name Y, where prefs pair each identity answer (chosen) with the
           base model's own greedy answer to the same prompt (rejected), generated here
Each adapter and the base answer the held-out questions greedily (--max_new_tokens); scored by ROUGE-L F1 with
eval.metrics' unicode tokenizer (CJK per character, so the Chinese records count) and by the share of answers
that name the new identity ("Ada" or "Lovelace"), per language.

Results merge into bench/results/finetune-recipe.json (one entry per part, each with the base measured in its
own invocation) and are rendered to finetune-recipe.md.

    python bench/finetune_recipe.py [--parts default,common,dpo] [--timeout 3600]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = ROOT.parent / "shared" / "corpus" / "finetune" / "identity.json"
VARIABLES = "name=Ada,author=Lovelace Labs"
IDENTITY = re.compile(r"(?<![A-Za-z])Ada(?![A-Za-z])|Lovelace")
RESULTS = ROOT / "bench" / "results"
# The CLI's defaults (FinetuneConfig.test_size, TrainingArguments.seed): the runs hold out these records.
TEST_SIZE, SEED = 0.1, 42
PARTS = ("default", "common", "dpo")
COMMON_FLAGS = ["--learning_rate", "3e-4", "--num_train_epochs", "3", "--per_device_train_batch_size", "8"]

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402

from bench.machine import matrix_units  # noqa: E402
from chatapp.adapters import read_card  # noqa: E402
from chatapp.datasets import Example, Preference, read_preferences, read_records, split  # noqa: E402
from chatapp.loading import load_base  # noqa: E402
from chatapp.settings import Settings  # noqa: E402
from eval.metrics import score_pairs  # noqa: E402
from finetune.train import generate_answers  # noqa: E402


@dataclass
class Score:
    rougeL: float  # mean ROUGE-L F1 over the held-out records, unicode tokenizer
    rougeL_by_language: dict[str, float]
    named_by_language: dict[str, float]  # share of answers naming the new identity
    n_by_language: dict[str, int]
    answers: list[str]


def identity_examples() -> list[Example]:
    """identity.json with the bench's {{name}}/{{author}} filled in."""
    return read_records(DATA, dict(p.split("=", 1) for p in VARIABLES.split(",")))


def language(text: str) -> str:
    return "zh" if re.search(r"[\u4e00-\u9fff]", text) else "en"


def score(answers: list[str], examples: list[Example]) -> Score:
    values = score_pairs(answers, [e.response for e in examples], tokenizer="unicode").rouge["rougeL"]["fmeasure"]
    by: dict[str, list[tuple[float, bool]]] = {}
    for value, answer, example in zip(values, answers, examples):
        by.setdefault(language(example.question), []).append((value, bool(IDENTITY.search(answer))))
    return Score(rougeL=round(sum(values) / len(values), 4),
                 rougeL_by_language={k: round(sum(v for v, _ in rows) / len(rows), 4) for k, rows in by.items()},
                 named_by_language={k: round(sum(n for _, n in rows) / len(rows), 4) for k, rows in by.items()},
                 n_by_language={k: len(rows) for k, rows in by.items()}, answers=answers)


def answer(settings: Settings, examples: list[Example], max_new_tokens: int, adapter: Path | None = None) -> list[str]:
    """Greedy answers of the base (fresh load each time, so no adapter leaks into the next score) or an adapter."""
    model, tokenizer, _ = load_base(settings, precision="32bit", device="cpu")
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    return generate_answers(model, tokenizer, [e.prompt for e in examples], max_new_tokens)


def run_finetune(argv: list[str], env: dict, log: Path, timeout: float) -> dict:
    """`python -m finetune ARGV` as a subprocess; wall time, exit status and the log's tail."""
    started = time.perf_counter()
    with log.open("w") as out:
        try:
            rc = subprocess.run([sys.executable, "-m", "finetune", *argv], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = None  # killed at the timeout: the run did not finish
    wall = time.perf_counter() - started
    tail = log.read_text(errors="replace").splitlines()[-5:]
    return {"command": "python -m finetune " + " ".join(argv), "rc": rc, "wall_seconds": round(wall, 1), "log_tail": tail}


def card_of(adapter: Path) -> dict:
    card = read_card(adapter)
    training = card.get("training", {})
    return {"optimizer_steps": training.get("optimizer_steps"), "train_seconds": training.get("seconds"),
            "epochs": card["hyperparameters"].get("num_train_epochs"),
            "learning_rate": card["hyperparameters"].get("learning_rate"),
            "batch": card["hyperparameters"].get("per_device_train_batch_size"),
            "metrics": card.get("metrics") or card.get("held_out"), "forgetting": card.get("forgetting")}


def preference_pairs(settings: Settings, examples: list[Example], max_new_tokens: int) -> list[Preference]:
    """Chosen = the identity answer, rejected = the base model's own greedy answer to the same prompt."""
    rejected = answer(settings, examples, max_new_tokens)
    return [Preference(e.prompt, e.response, r) for e, r in zip(examples, rejected) if r.strip() != e.response.strip()]


def targets(part: str, base: Score, adapter: Score | None, wall: float, finished: bool) -> list[dict]:
    """Rows of the table: measure, base, adapter, target, met."""
    rows = []

    def row(measure, base_value, value, target, met):
        rows.append({"part": part, "measure": measure, "base": base_value, "adapter": value, "target": target,
                     "met": None if value is None else bool(met)})

    got = adapter.rougeL if adapter else None
    if part == "default":
        row("held-out ROUGE-L (unicode)", base.rougeL, got, f">= {base.rougeL + 0.3:.3f} (base + 0.3)",
            got is not None and got >= base.rougeL + 0.3)
        for lang in sorted(base.named_by_language):
            value = adapter.named_by_language.get(lang) if adapter else None
            row(f"held-out answers naming Ada/Lovelace, {lang} (n={base.n_by_language[lang]})",
                base.named_by_language[lang], value, ">= 0.80", value is not None and value >= 0.8)
        row("wall time of the run, s (2 shared cores)" + ("" if finished else ", killed unfinished"), None, round(wall),
            "<= 300", finished and wall <= 300)
    elif part == "common":
        goal = max(base.rougeL + 0.2, 0.4)
        row("held-out ROUGE-L (unicode), lr 3e-4, 3 epochs, batch 8", base.rougeL, got,
            f">= {goal:.3f} (base + 0.2 and 0.4)", got is not None and got >= goal)
    else:
        row("held-out ROUGE-L against the chosen answers (unicode), DPO", base.rougeL, got,
            f">= {base.rougeL + 0.15:.3f} (base + 0.15)", got is not None and got >= base.rougeL + 0.15)
    return rows


def cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def render(result: dict) -> str:
    lines = ["# Default fine-tuning recipe on identity data (embedded SmolLM2-135M-Instruct, CPU LoRA)", "",
             f"Data: identity.json with `{VARIABLES}`; held out: the CLI's split (test_size {TEST_SIZE}, seed {SEED}). "
             "Scores: greedy answers, ROUGE-L F1 with the unicode tokenizer; 'naming' = the answer contains Ada or "
             "Lovelace. Each part's base was measured in the same invocation. Wall times are on 2 CPU cores shared "
             "with other jobs (load average printed per part), so they are pessimistic.", "",
             "| measure | base | adapter | target | met? |", "|---|---|---|---|---|"]
    for name in PARTS:
        part = result["parts"].get(name)
        if not part:
            lines.append(f"| {name}: not measured | - | - | - | - |")
            continue
        for r in part["rows"]:
            lines.append(f"| {r['measure']} | {cell(r['base'])} | {cell(r['adapter'])} | {r['target']} | {cell(r['met'])} |")
    lines.append("")
    for name in PARTS:
        part = result["parts"].get(name)
        if not part:
            continue
        run = part["run"]
        lines += [f"## {name}", "", f"    {run['command']}", "",
                  f"exit status {run['rc']} ({'killed at the timeout' if run['rc'] is None else 'finished'}), wall "
                  f"{run['wall_seconds']} s; load average {part['load_before']} before, {part['load_after']} after; "
                  f"{part['created']}."]
        if part.get("card"):
            card = part["card"]
            lines.append(f"Card: {card['optimizer_steps']} optimizer steps, {card['epochs']} epochs, lr "
                         f"{card['learning_rate']}, batch {card['batch']}, training {card['train_seconds']} s.")
        if part.get("pairs"):
            lines.append(f"Preference pairs: {part['pairs']} (chosen = identity answer, rejected = base's answer).")
        adapter = part.get("adapter")
        for i, question in enumerate(part["questions"][:4]):
            got = adapter["answers"][i] if adapter else "-"
            lines.append(f"- {question!r}: base {part['base']['answers'][i][:90]!r} / adapter {got[:90]!r}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before a training run is killed")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="token limit of scored answers")
    parser.add_argument("--work", default=str(ROOT / "data" / "bench-recipe"),
                        help="the runs' data folder (adapters, runs, prefs.jsonl); emptied first")
    opts = parser.parse_args(argv)
    parts = [p.strip() for p in opts.parts.split(",") if p.strip()]
    if any(p not in PARTS for p in parts):
        parser.error(f"--parts takes {', '.join(PARTS)}")
    work = Path(opts.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "CHATAPP_DATA_DIR": str(work)}
    settings = Settings.from_env(data_dir=work)
    print(f"load average at start: {os.getloadavg()}", flush=True)

    examples = identity_examples()
    _, held_out = split(examples, TEST_SIZE, SEED)
    base = score(answer(settings, held_out, opts.max_new_tokens), held_out)
    print(f"base: ROUGE-L {base.rougeL}, naming {base.named_by_language}", flush=True)

    out = RESULTS / "finetune-recipe.json"
    result = json.loads(out.read_text()) if out.exists() else {"parts": {}}
    for name in parts:
        load_before = [round(x, 1) for x in os.getloadavg()]
        entry: dict = {"questions": [e.question for e in held_out], "base": asdict(base)}
        adapter_name = f"recipe-{name}"
        if name == "dpo":
            pairs = preference_pairs(settings, examples, opts.max_new_tokens)
            prefs = work / "prefs.jsonl"
            prefs.write_text("".join(json.dumps(p.to_trl(), ensure_ascii=False) + "\n" for p in pairs))
            # The DPO run splits the pairs the same way; score its held-out prompts against their chosen answers.
            _, test_pairs = split(read_preferences(prefs), TEST_SIZE, SEED)
            scored = [Example(p.prompt, p.chosen) for p in test_pairs]
            entry.update(pairs=len(pairs), questions=[e.question for e in scored])
            entry["base"] = asdict(base_scored := score(answer(settings, scored, opts.max_new_tokens), scored))
            argv = ["--method", "dpo", "--data", str(prefs), "--name", adapter_name]
        else:
            scored, base_scored = held_out, base
            argv = ["--data", str(DATA), "--name", adapter_name, "--template_vars", VARIABLES]
            argv += COMMON_FLAGS if name == "common" else []
        print(f"{name}: python -m finetune {' '.join(argv)}", flush=True)
        run = run_finetune(argv, env, work / f"{name}.log", opts.timeout)
        print(json.dumps(run), flush=True)
        folder = Path(settings.adapters_dir) / adapter_name
        adapter = None
        if run["rc"] == 0 and folder.is_dir():
            adapter = score(answer(settings, scored, opts.max_new_tokens, folder), scored)
            entry["card"] = card_of(folder)
            print(f"{name}: ROUGE-L {adapter.rougeL}, naming {adapter.named_by_language}", flush=True)
        entry.update(run=run, adapter=asdict(adapter) if adapter else None,
                     rows=targets(name, base_scored, adapter, run["wall_seconds"], run["rc"] == 0),
                     load_before=load_before, load_after=[round(x, 1) for x in os.getloadavg()],
                     created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        result["parts"][name] = entry
        result.update(cpu_matrix_units=matrix_units(), torch_threads=torch.get_num_threads(),
                      omp_num_threads=os.environ.get("OMP_NUM_THREADS"), max_new_tokens=opts.max_new_tokens)
        RESULTS.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
        (RESULTS / "finetune-recipe.md").write_text(render(result))
    print(render(result))
    print(f"load average at end: {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
