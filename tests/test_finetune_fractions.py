"""--data_fractions' score-against-records output: the PNG beside the runs and the Fine-tune tab's plot data.
(The runs themselves are the real-model tests' business; these rows are what train_fractions returns.)"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from chatapp.settings import Settings
from finetune.train import plot_fractions
from finetune.ui import Job, Trainer, fractions_frame

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    {"fraction": 0.25, "records": 20, "adapter": "me-25pct", "eval_rougeL": 0.21, "eval_loss": 1.9},
    {"fraction": 0.5, "records": 41, "adapter": "me-50pct", "eval_rougeL": 0.34, "eval_loss": 1.4},
    {"fraction": 1.0, "records": 82, "adapter": "me-100pct", "eval_rougeL": 0.52, "eval_loss": 0.9},
]


def test_plot_is_a_png_of_score_against_records(tmp_path):
    path = plot_fractions(ROWS, tmp_path / "runs" / "me-fractions.png", "me")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (500, 320)
        # Something was drawn besides the white background: the line, its markers and labels.
        assert len(image.convert("L").getcolors(maxcolors=1 << 16)) > 10


def test_the_tab_plots_finished_runs_only(tmp_path):
    job = Job()
    assert fractions_frame(job).empty
    job.fraction_rows += ROWS[:2] + [{**ROWS[2], "eval_rougeL": None}]  # a run without held-out scoring
    frame = fractions_frame(job)
    assert frame["records"].tolist() == [20, 41] and frame["rougeL"].tolist() == [0.21, 0.34]


def test_the_tab_refuses_fractions_whose_adapter_names_are_taken(tmp_path, corpus):
    settings = Settings.from_env(data_dir=tmp_path)
    (Path(settings.adapters_dir) / "me-50pct").mkdir(parents=True)
    data = tmp_path / "datasets" / "identity.json"  # the tab trains only on files inside the data folder
    data.parent.mkdir()
    shutil.copyfile(corpus / "finetune" / "identity.json", data)
    with pytest.raises(ValueError, match="me-50pct"):
        Trainer(settings).start(str(data), "me", "lora", 0, 0, None, 16, 512, "", data_fractions="0.25,0.5,1")


@pytest.mark.slow
def test_cli_trains_each_fraction_and_writes_the_plot_beside_the_runs(tmp_path, corpus):
    """The real model, one optimizer step per fraction: two adapters, the printed rows, the JSON and PNG."""
    data = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "-m", "finetune", "--data", str(corpus / "finetune" / "identity.json"), "--name", "f",
         "--template_vars", "name=Ada,author=Lovelace Labs", "--data_fractions", "0.5,1", "--max_steps", "1",
         "--test_size", "2", "--max_length", "64", "--per_device_train_batch_size", "2", "--eval_generate_samples", "2",
         "--eval_max_new_tokens", "4", "--forgetting_data", "", "--save_strategy", "no", "--eval_strategy", "steps",
         "--eval_steps", "1", "--load_best_model_at_end", "false", "--disable_tqdm", "true"],
        capture_output=True, text=True, cwd=ROOT, timeout=900,
        env={**os.environ, "CHATAPP_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert (data / "adapters" / "f-50pct").is_dir() and (data / "adapters" / "f-100pct").is_dir()
    rows = json.loads((data / "runs" / "f-fractions.json").read_text())
    assert [r["records"] for r in rows] == [44, 89] and all(r["eval_rougeL"] is not None for r in rows)
    with Image.open(data / "runs" / "f-fractions.png") as image:
        assert image.format == "PNG"
    assert "held-out ROUGE-L" in result.stdout and "f-fractions.png" in result.stdout
