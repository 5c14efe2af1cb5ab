"""Online Elo and Bradley-Terry as FastChat computes them: exact small cases and simulated arenas."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.ratings import (
    bootstrap_elo,
    compute_bt,
    compute_elo,
    leaderboard,
    pairwise_win_fraction,
    ranks,
    ratings_json,
    style_control,
    style_counts,
    style_matrix,
)

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


def verbose_arena(n: int, seed: int) -> list[dict]:
    """'verbose' answers as well as 'plain' but about twice as long, 'weak' answers worse; voters favour
    the longer answer (logit 2 per unit of FastChat's normalised length difference)."""
    rng = np.random.default_rng(seed)
    length = {"verbose": (20, 100), "plain": (5, 40), "weak": (5, 40)}  # answer lengths vary within a variant
    quality = {"verbose": 0.0, "plain": 0.0, "weak": -1.0}
    battles = []
    for _ in range(n):
        a, b = (str(m) for m in rng.choice(list(length), size=2, replace=False))
        la, lb = int(rng.integers(*length[a])), int(rng.integers(*length[b]))
        logit = quality[a] - quality[b] + 2.0 * (la - lb) / (la + lb + 1)
        battles.append({"model_a": a, "model_b": b, "answer_a": " ".join(["word"] * la),
                        "answer_b": " ".join(["word"] * lb),
                        "winner": "model_a" if rng.random() < 1 / (1 + math.exp(-logit)) else "model_b"})
    return battles


def test_style_control_keeps_a_variant_that_only_writes_longer_from_ranking_first():
    battles = verbose_arena(1500, seed=1)
    plain = {r.model: r for r in leaderboard(battles, rounds=100)}
    assert plain["verbose"].rank == 1 and plain["plain"].rank == 2  # plain BT puts the long writer alone on top
    gap = plain["verbose"].bt - plain["plain"].bt
    assert gap > 100
    style = style_control(battles, rounds=200)
    assert abs(style.ratings["verbose"] - style.ratings["plain"]) < gap / 3  # equally good once length is held fixed
    assert style.rank["verbose"] == style.rank["plain"] == 1 and style.rank["weak"] == 3
    assert style.coefficients["length"] > 0.5  # the fit attributes the extra wins to length
    assert style.coefficients["headers"] == style.coefficients["bold"] == 0.0  # no markdown: no information
    for m, (low, high) in style.ci.items():
        assert low <= style.ratings[m] <= high


def test_style_features_count_markdown_outside_code_and_read_fastchat_metadata():
    text = "# Title\n\nSome **bold** and __more__.\n\n- one\n- two\n1. three\n```\n# not a header\n- no\n```"
    length, headers, lists, bold = style_counts(text)
    assert (headers, lists, bold) == (1, 3, 2) and length > 10
    assert style_counts("你好世界")[0] == 4  # CJK counts per character
    battle = {"model_a": "x", "model_b": "y", "winner": "model_a", "conv_metadata": {
        "sum_assistant_a_tokens": 50, "header_count_a": {"h1": 1, "h2": 0}, "list_count_a": {"ordered": 2},
        "bold_count_a": {"**": 1, "__": 0}, "sum_assistant_b_tokens": 10, "header_count_b": {"h1": 0},
        "list_count_b": {"ordered": 0}, "bold_count_b": {"**": 0}}}
    other = {"model_a": "y", "model_b": "x", "winner": "model_b",
             "conversation_a": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "short"}],
             "conversation_b": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "# A\n" + "w " * 40}]}
    features = style_matrix([battle, other, {**battle, "winner": "model_b"}])
    assert features.shape == (3, 4) and np.allclose(features.mean(axis=0), 0)
    assert style_matrix([{"model_a": "x", "model_b": "y", "winner": "tie"}]) is None  # nothing to measure


def test_ratings_json_carries_style_control_beside_plain_bt(tmp_path):
    battles = verbose_arena(200, seed=2)
    path = tmp_path / "battles.jsonl"
    path.write_text("".join(json.dumps(b) + "\n" for b in battles))
    out = run_cli("arena", "ratings", "--votes", str(path), "--rounds", "100", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data["style_control"]["bt"]) == set(data["bt"]) == {"verbose", "plain", "weak"}
    assert set(data["style_control"]["coefficients"]) == {"length", "headers", "lists", "bold"}
    row = data["style_control"]["bt"]["plain"]
    assert row["ci_low"] <= row["rating"] <= row["ci_high"] and row["rank"] == 1
    table = run_cli("arena", "ratings", "--votes", str(path), "--rounds", "100")
    assert "style-controlled BT" in table.stdout and "length +" in table.stdout
