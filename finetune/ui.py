"""The Fine-tune tab: pick or upload a dataset, choose the method and key settings, train in the background.

app.py calls build_finetune_tab(settings, registry) inside `with gr.Tab("Fine-tune"):`. Training runs in a
thread (torch releases the GIL in its kernels, so chat stays usable); a timer polls the job for the
progress bar and the loss curve. The finished adapter lands in DATA/adapters/, where the registry's
variant list picks it up with no restart.
"""
from __future__ import annotations

import html
import shutil
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from chatapp.access import inside_data_folder
from chatapp.settings import Settings

METHOD_CHOICES = ["lora", "qlora", "prompt-tuning", "dpo", "orpo"]
DATA_SUFFIXES = (".json", ".jsonl")


@dataclass
class Job:
    """One training run's state as the tab shows it; written by the training thread, read by the timer."""

    name: str = ""
    state: str = "idle"  # idle | running | done | failed | cancelled
    step: int = 0
    max_steps: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    fraction_rows: list[dict] = field(default_factory=list)  # --data_fractions: one row per finished run
    message: str = ""
    started: float = 0.0
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def on_log(self, entry: dict) -> None:
        self.step, self.max_steps = entry.get("step", self.step), entry.get("max_steps", self.max_steps)
        if "loss" in entry:
            self.losses.append((entry["step"], float(entry["loss"])))
        if "eval_loss" in entry:
            self.eval_losses.append((entry["step"], float(entry["eval_loss"])))


def dataset_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "datasets"


def dataset_choices(settings: Settings) -> list[str]:
    folder = dataset_dir(settings)
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in DATA_SUFFIXES) if folder.is_dir() else []


def keep_upload(settings: Settings, upload) -> str:
    """Copy an uploaded dataset into DATA/datasets/ so it survives restarts; returns its path."""
    path = Path(upload if isinstance(upload, str) else getattr(upload, "path", None) or upload.name)
    if path.suffix.lower() not in DATA_SUFFIXES:
        raise ValueError(f"{path.name}: a dataset must be a .json or .jsonl file")
    size_limit = settings.max_upload_mb * 2**20
    if path.stat().st_size > size_limit:
        raise ValueError(f"{path.name} is over the {settings.max_upload_mb} MB upload limit")
    target = dataset_dir(settings) / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    return str(target)


class Trainer:
    """Starts at most one background run at a time and reports its state."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.job = Job()
        self._lock = threading.Lock()

    def start(self, data: str, name: str, method: str, epochs: float, max_steps: int, learning_rate: float | None,
              lora_r: int, max_length: int, template_vars: str, test_size: float = 0.1,
              forgetting_check: bool = True, from_arena: bool = False, data_fractions: str = "") -> str:
        from finetune.config import (
            PREFERENCE_METHODS,
            FinetuneConfig,
            training_arguments,
        )
        from finetune.data import read_preferences, read_records
        from finetune.preference import arena_pairs

        with self._lock:
            if self.job.state == "running":
                raise RuntimeError(f"run '{self.job.name}' is still training; cancel it or wait")
            from_arena = bool(from_arena) and method in PREFERENCE_METHODS
            if not data and not from_arena:
                raise ValueError("choose or upload a dataset first" + (", or tick 'From arena votes'"
                                                                       if method in PREFERENCE_METHODS else ""))
            if not from_arena:
                data = str(inside_data_folder(data, self.settings.data_dir))
            config = FinetuneConfig(data=None if from_arena else str(data), name=(name or "").strip(), method=method,
                                    lora_r=int(lora_r), template_vars=template_vars or None,
                                    data_dir=str(self.settings.data_dir), base=self.settings.base_model,
                                    test_size=float(test_size or 0), from_arena=from_arena,
                                    data_fractions=(data_fractions or "").strip() or None,
                                    **({} if forgetting_check else {"forgetting_samples": 0}))
            names = ([f"{config.name}-{round(f * 100)}pct" for f in config.fractions()] if config.data_fractions
                     else [config.name])
            taken = [n for n in names if (Path(self.settings.adapters_dir) / n).exists()]
            if taken:
                raise ValueError(f"an adapter named '{taken[0]}' exists already; choose another name")
            # Bad data (or an arena with no decisive votes) fails here, before any model loads.
            if from_arena:
                if not arena_pairs(self.settings).pairs:
                    raise ValueError("the arena has no decisive votes yet ('A is better' or 'B is better')")
            elif config.preference:
                read_preferences(config.data, config.variables())
            else:
                read_records(config.data, config.variables())
            chosen = {"num_train_epochs": float(epochs), "max_steps": int(max_steps or 0) or -1,
                      "max_length": int(max_length), "disable_tqdm": True, "logging_steps": 1}  # a live curve
            if learning_rate:
                chosen["learning_rate"] = float(learning_rate)
            args = training_arguments(config, **chosen)
            self.job = job = Job(name=config.name, state="running", started=time.time(), message="loading the base model")
            job.thread = threading.Thread(target=self._run, args=(job, config, args), name=f"finetune-{config.name}",
                                          daemon=True)
            job.thread.start()
            return config.name

    def _run(self, job: Job, config, args) -> None:
        from finetune.train import Cancelled, train, train_fractions

        try:
            if config.data_fractions:
                rows = train_fractions(config, args, cancel=job.cancel, on_log=job.on_log, on_row=job.fraction_rows.append)
                job.state, job.message = "done", "adapters " + ", ".join(f"'{r['adapter']}'" for r in rows) + \
                    f" are ready; score against records in {Path(args.output_dir).with_name(config.name + '-fractions.png')}"
            else:
                path = train(config, args, cancel=job.cancel, on_log=job.on_log)
                job.state, job.message = "done", f"adapter '{job.name}' is ready: pick it in the Chat tab or the arena ({path})"
        except Cancelled as error:
            job.state, job.message = "cancelled", str(error)
        except Exception as error:  # shown in the tab; the full trace goes to the server log
            traceback.print_exc()
            job.state, job.message = "failed", f"{type(error).__name__}: {error}".splitlines()[0]

    def cancel(self) -> str:
        if self.job.state != "running":
            return "nothing is training"
        self.job.cancel.set()
        return f"cancelling '{self.job.name}' after the current step"


def status_markdown(job: Job) -> str:
    if job.state == "idle":
        return "No run yet."
    elapsed = time.time() - job.started
    head = {"running": "Training", "done": "Done", "failed": "Failed", "cancelled": "Cancelled"}[job.state]
    parts = [f"**{head}** `{job.name}` — step {job.step}/{job.max_steps or '?'}, {elapsed:.0f} s"]
    if job.losses:
        parts.append(f"loss {job.losses[-1][1]:.3f}")
    if job.eval_losses:
        parts.append(f"eval loss {job.eval_losses[-1][1]:.3f}")
    return " · ".join(parts) + (f"\n\n{job.message}" if job.message else "")


def progress_html(job: Job) -> str:
    share = job.step / job.max_steps if job.max_steps else 0.0
    if job.state == "done":
        share = 1.0
    return (f'<div id="ft-progress-bar" data-share="{share:.3f}" style="background:#e5e7eb;border-radius:4px;height:14px">'
            f'<div style="width:{share * 100:.1f}%;background:#f97316;height:14px;border-radius:4px"></div></div>'
            f'<small>{html.escape(job.state)} {share * 100:.0f}%</small>')


def loss_frame(job: Job):
    import pandas as pd

    rows = [{"step": s, "loss": v, "split": "train"} for s, v in job.losses]
    rows += [{"step": s, "loss": v, "split": "eval"} for s, v in job.eval_losses]
    return pd.DataFrame(rows or [], columns=["step", "loss", "split"])


def chart_value(frame):
    """What a LinePlot is given: None until there is a point. An empty frame's columns have no numeric dtype,
    and a chart first drawn from one, then hidden behind another tab and shown again, drew later points on
    category axes with no line (Gradio 6.31; seen in tests/test_preference_ui.py's screenshot)."""
    return None if frame.empty else frame


def fractions_frame(job: Job):
    """Held-out ROUGE-L against training records, one point per finished --data_fractions run."""
    import pandas as pd

    rows = [{"records": r["records"], "rougeL": r["eval_rougeL"]} for r in job.fraction_rows
            if r.get("eval_rougeL") is not None]
    return pd.DataFrame(rows or [], columns=["records", "rougeL"])


def arena_votes_note(settings: Settings) -> str:
    from finetune.preference import MIN_ARENA_PAIRS, arena_pairs

    found = arena_pairs(settings)
    if not found.pairs:
        return "The arena has no decisive votes yet."
    enough = "" if len(found.pairs) >= MIN_ARENA_PAIRS else f" (at least {MIN_ARENA_PAIRS} are advised)"
    return f"Arena: {found}{enough}."


def build_finetune_tab(settings: Settings, registry=None):
    import gradio as gr
    import torch

    trainer = Trainer(settings)
    default_method = "qlora" if torch.cuda.is_available() else "lora"
    gr.Markdown("Teach the model from examples: Alpaca records (instruction/input/output) or conversations "
                "(`messages` or ShareGPT `conversations`), JSON or JSONL. The result is a chat variant.")
    with gr.Row():
        with gr.Column():
            upload = gr.File(label="Upload a dataset", file_types=list(DATA_SUFFIXES), elem_id="ft-upload")
            data = gr.Dropdown(label="Dataset", choices=dataset_choices(settings), allow_custom_value=True,
                               elem_id="ft-data", info="an uploaded file, or a file inside the data folder")
            name = gr.Textbox(label="Adapter name", placeholder="my-task", elem_id="ft-name")
            method = gr.Radio(METHOD_CHOICES, value=default_method, label="Method", elem_id="ft-method",
                              info="qlora: 4-bit base + LoRA (GPU); lora: full-precision base; prompt-tuning: soft "
                                   "prompt; dpo / orpo: preference pairs (prompt/chosen/rejected) or arena votes")
            from_arena = gr.Checkbox(value=False, label="From arena votes (dpo/orpo: winner chosen, loser rejected)",
                                     elem_id="ft-from-arena")
            arena_note = gr.Markdown(lambda: arena_votes_note(settings), elem_id="ft-arena-note")
            template_vars = gr.Textbox(label="Fill placeholders (optional)", placeholder="name=Ada,author=Lovelace Labs",
                                       elem_id="ft-template-vars")
        with gr.Column():
            epochs = gr.Number(value=0, label="Epochs (0 = by dataset size)", elem_id="ft-epochs", minimum=0)
            max_steps = gr.Number(value=0, precision=0, label="Max steps (0 = by epochs)", elem_id="ft-max-steps",
                                  minimum=0)
            learning_rate = gr.Number(value=0, minimum=0, label="Learning rate (0 = method default: 3e-4 LoRA, 3e-2 prompt tuning, 2e-4 dpo/orpo)", elem_id="ft-lr")
            lora_r = gr.Number(value=16, precision=0, label="LoRA rank", elem_id="ft-lora-r", minimum=1)
            max_length = gr.Number(value=512, precision=0, label="Max tokens per example", elem_id="ft-max-length",
                                   minimum=16)
            test_size = gr.Number(value=0.1, label="Held out for evaluation (share; 0 = no evaluation)",
                                  elem_id="ft-test-size", minimum=0)
            fractions = gr.Textbox(label="Data fractions (optional): one adapter per share of the records",
                                   placeholder="0.25,0.5,1", elem_id="ft-fractions",
                                   info="how much data is enough: plots held-out ROUGE-L against records below")
            forgetting = gr.Checkbox(value=True, label="Forgetting check (base vs adapter on general instructions)",
                                     elem_id="ft-forgetting")
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="ft-start")
                cancel = gr.Button("Cancel", elem_id="ft-cancel")
    status = gr.Markdown("No run yet.", elem_id="ft-status")
    progress = gr.HTML(progress_html(Job()), elem_id="ft-progress")
    loss = gr.LinePlot(None, x="step", y="loss", color="split", title="Loss", elem_id="ft-loss")
    by_records = gr.LinePlot(None, x="records", y="rougeL", title="Held-out ROUGE-L by records",
                             elem_id="ft-fractions-plot")
    timer = gr.Timer(1.0, active=True)  # the first tick draws a run already going (the page was reloaded)

    def on_upload(file):
        if file is None:
            return gr.update(), gr.update(), gr.update()
        try:
            path = keep_upload(settings, file)
        except (OSError, ValueError) as error:
            return gr.update(), f"**Upload refused:** {error}", None
        # The file box is emptied so the next upload can follow; the dataset list keeps the file.
        return gr.update(choices=dataset_choices(settings), value=path), f"Dataset saved as `{path}`.", None

    def on_start(data_value, name_value, method_value, epochs_value, steps_value, lr_value, r_value, length_value,
                 vars_value, test_value, forgetting_value, arena_value, fractions_value):
        try:
            trainer.start(data_value, name_value, method_value, epochs_value, steps_value, lr_value, r_value,
                          length_value, vars_value, test_value, forgetting_value, arena_value, fractions_value)
        except Exception as error:  # a clear line in the tab; nothing started
            return f"**Not started:** {error}", progress_html(trainer.job), gr.Timer(active=False)
        return status_markdown(trainer.job), progress_html(trainer.job), gr.Timer(active=True)

    def on_tick():
        job = trainer.job
        if job.state == "idle":
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False)
        running = job.state == "running"
        return (status_markdown(job), progress_html(job), chart_value(loss_frame(job)),
                chart_value(fractions_frame(job)), gr.Timer(active=running))

    upload.upload(on_upload, upload, [data, status, upload], concurrency_limit=None)
    start.click(on_start, [data, name, method, epochs, max_steps, learning_rate, lora_r, max_length, template_vars,
                           test_size, forgetting, from_arena, fractions],
                [status, progress, timer], concurrency_limit=None)
    # Ticking "from arena votes" picks dpo, the method that needs no other data.
    from_arena.change(lambda on, m: ("dpo" if on and m not in ("dpo", "orpo") else m, arena_votes_note(settings)),
                      [from_arena, method], [method, arena_note], concurrency_limit=None)
    cancel.click(lambda: trainer.cancel(), None, status, concurrency_limit=None)
    timer.tick(on_tick, None, [status, progress, loss, by_records, timer], concurrency_limit=None)
    return trainer
