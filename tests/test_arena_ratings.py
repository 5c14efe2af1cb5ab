"""Online Elo and Bradley-Terry as FastChat computes them: exact small cases and simulated arenas."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.ratings import (bootstrap_elo, compute_bt, compute_elo, leaderboard, pairwise_win_fraction, ranks,
                          ratings_json)

ROOT = Path(__file__).resolve().parents[1]
TRUE = {"strong": 1250.0, "good": 1100.0, "fair": 1000.0, "weak": 850.0}


def simulate(n: int, seed: int) -> list[dict]:
    """Battles drawn from a known BT model on the Elo scale (no ties), random pairs and sides."""
    rng = np.random.default_rng(seed)
    models = list(TRUE)
    battles = []
    for _ in range(n):
        a, b = rng.choice(len(models), size=2, replace=False)
        p_a = 1 / (1 + 10 ** ((TRUE[models[b]] - TRUE[models[a]]) / 400))
        battles.append({"model_a": models[a], "model_b": models[b],
                        "winner": "model_a" if rng.random() < p_a else "model_b"})
    return battles


def test_elo_updates_exactly_as_fastchat():
    # 1st battle between equals: expected 0.5, K=4 -> +-2; a tie between equals moves nothing
    elo = compute_elo([{"model_a": "x", "model_b": "y", "winner": "model_a"}])
    assert elo == {"x": 1002.0, "y": 998.0}
    assert compute_elo([{"model_a": "x", "model_b": "y", "winner": "tie"}]) == {"x": 1000.0, "y": 1000.0}
    battles = [{"model_a": "x", "model_b": "y", "winner": "model_a"},
               {"model_a": "y", "model_b": "x", "winner": "tie (bothbad)"}]
    ey = 1 / (1 + 10 ** ((1002 - 998) / 400))
    assert compute_elo(battles)["y"] == pytest.approx(998 + 4 * (0.5 - ey), abs=1e-12)
    # online Elo depends on vote order
    flipped = [{"model_a": "x", "model_b": "y", "winner": "model_b"}, battles[0]]
    assert compute_elo(flipped) != compute_elo(flipped[::-1])


def test_bt_counts_ties_as_half_and_matches_the_closed_form():
    # two models: the MLE rating gap is 400 * log10(s / (1 - s)), s = (wins + ties/2) / battles
    battles = ([{"model_a": "x", "model_b": "y", "winner": "model_a"}] * 5
               + [{"model_a": "y", "model_b": "x", "winner": "model_a"}] * 2
               + [{"model_a": "x", "model_b": "y", "winner": "tie"}] * 3)
    bt = compute_bt(battles)
    share = (5 + 1.5) / 10
    assert bt["x"] - bt["y"] == pytest.approx(400 * math.log10(share / (1 - share)), abs=1e-2)
    assert (bt["x"] + bt["y"]) / 2 == pytest.approx(1000, abs=1e-6)
    ties = [{"model_a": "x", "model_b": "y", "winner": "tie"}] * 4
    assert compute_bt(ties) == {"x": pytest.approx(1000), "y": pytest.approx(1000)}


def test_simulated_arena_recovers_the_ranking_and_intervals_cover_the_truth():
    battles = simulate(3000, seed=7)
    centred = {m: r - np.mean(list(TRUE.values())) + 1000 for m, r in TRUE.items()}  # BT is centred on 1000
    rows = leaderboard(battles, rounds=300)
    assert [r.model for r in rows] == list(TRUE)  # best first
    assert [r.rank for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert r.bt_low <= centred[r.model] <= r.bt_high, r
        assert r.bt_low < r.bt < r.bt_high
        assert r.battles == sum(r.model in (b["model_a"], b["model_b"]) for b in battles)
    elo = compute_elo(battles)
    assert sorted(elo, key=elo.get, reverse=True) == list(TRUE)
    models, boot = bootstrap_elo(battles, rounds=300)
    low, high = np.percentile(boot, 2.5, axis=0), np.percentile(boot, 97.5, axis=0)
    for m, lo, hi in zip(models, low, high):
        assert lo <= centred[m] <= hi, (m, lo, hi)


def test_rank_is_one_plus_models_clearly_above():
    lows = {"a": 1100, "b": 1050, "c": 900}
    highs = {"a": 1200, "b": 1150, "c": 1000}
    assert ranks(lows, highs) == {"a": 1, "b": 1, "c": 3}


def test_pairwise_win_fraction_counts_ties_as_battles_not_wins():
    battles = [{"model_a": "x", "model_b": "y", "winner": "model_a"},
               {"model_a": "y", "model_b": "x", "winner": "model_a"},
               {"model_a": "y", "model_b": "x", "winner": "model_b"},
               {"model_a": "x", "model_b": "y", "winner": "tie"}]
    models, fraction = pairwise_win_fraction(battles, ["x", "y"])
    assert fraction[0, 1] == 0.5 and fraction[1, 0] == 0.25 and np.isnan(fraction[0, 0])


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "eval", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_ratings_cli_rates_a_jsonl_file(tmp_path):
    battles = simulate(400, seed=3)
    path = tmp_path / "battles.jsonl"
    path.write_text("".join(json.dumps({**b, "tstamp": i}) + "\n" for i, b in enumerate(battles)))
    out = run_cli("arena", "ratings", "--votes", str(path), "--rounds", "100", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["elo"] == pytest.approx(compute_elo(battles))
    assert data["bt"] == ratings_json(battles, rounds=100)["bt"]
    for m, row in data["bt"].items():
        assert set(row) == {"rating", "ci_low", "ci_high", "rank", "battles"}
        assert row["ci_low"] <= row["rating"] <= row["ci_high"]
    table = run_cli("arena", "ratings", "--votes", str(path), "--rounds", "100")
    assert table.returncode == 0 and "strong" in table.stdout.splitlines()[2]


@pytest.mark.parametrize("line, expected", [
    ('{"model_a": "x", "model_b": "y", "winner": "A"}', "winner must be one of"),
    ('{"model_a": "x", "winner": "tie"}', "missing or empty field 'model_b'"),
    ('{"model_a": "x", "model_b": "y", "winner": "tie"', "not valid JSON"),
    ('["x", "y", "tie"]', "expected a JSON object"),
])
def test_ratings_cli_rejects_bad_lines_with_the_line_number(tmp_path, line, expected):
    good = json.dumps({"model_a": "x", "model_b": "y", "winner": "model_a"})
    path = tmp_path / "votes.jsonl"
    path.write_text(f"{good}\n{good}\n{line}\n{good}\n")
    out = run_cli("arena", "ratings", "--votes", str(path))
    assert out.returncode == 1
    assert out.stderr.startswith(f"error: {path}:3: ") and expected in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
