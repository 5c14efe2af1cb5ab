"""Arena ratings as FastChat computes them: online Elo and Bradley-Terry maximum likelihood.

A battle is a mapping with FastChat's fields `model_a`, `model_b` and `winner` (one of WINNERS),
in vote order. Online Elo follows fastchat/serve/monitor/elo_analysis.py `compute_elo`
(K=4, base 10, scale 400, start 1000, ties = half a win). Bradley-Terry follows
fastchat/serve/monitor/rating_systems.py `compute_bt` / `compute_bootstrap_bt`: a logistic
likelihood over the distinct (model_a, model_b, outcome) rows weighted by their counts, fitted
with scipy's L-BFGS-B, ties as outcome 0.5, put on the Elo scale as 400 * rating + 1000.
Style control follows the same file's `compute_style_control`: Bradley-Terry with four answer-style
features (length, markdown headers, lists, bold) as covariates, so a variant that wins only by writing
longer or more decorated answers does not rank first.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)")
K, SCALE, BASE, INIT_RATING = 4.0, 400.0, 10.0, 1000.0
N_BOOTSTRAP = 1000


def check_battle(battle: Mapping) -> None:
    for key in ("model_a", "model_b", "winner"):
        if not isinstance(battle.get(key), str) or not battle.get(key):
            raise ValueError(f"missing or empty field {key!r}")
    if battle["winner"] not in WINNERS:
        raise ValueError(f"winner must be one of {', '.join(WINNERS)}, not {battle['winner']!r}")
    if battle["model_a"] == battle["model_b"]:
        raise ValueError(f"a model cannot battle itself ({battle['model_a']!r})")


def _outcome(winner: str) -> float:
    return {"model_a": 1.0, "model_b": 0.0}.get(winner, 0.5)


def compute_elo(battles: Iterable[Mapping], k: float = K, scale: float = SCALE, base: float = BASE,
                init_rating: float = INIT_RATING) -> dict[str, float]:
    """Online Elo over the battles in order (FastChat's `compute_elo`)."""
    rating: dict[str, float] = defaultdict(lambda: init_rating)
    for battle in battles:
        a, b = battle["model_a"], battle["model_b"]
        ra, rb = rating[a], rating[b]
        ea = 1 / (1 + base ** ((rb - ra) / scale))
        eb = 1 / (1 + base ** ((ra - rb) / scale))
        sa = _outcome(battle["winner"])
        rating[a] += k * (sa - ea)
        rating[b] += k * (1 - sa - eb)
    return dict(rating)


def _models(battles: Sequence[Mapping]) -> list[str]:
    seen: dict[str, None] = {}
    for battle in battles:
        seen.setdefault(battle["model_a"])
        seen.setdefault(battle["model_b"])
    return list(seen)


def _bt_arrays(battles: Sequence[Mapping], models: list[str]):
    """Distinct (a, b, outcome) rows and their counts (FastChat's `preprocess_for_bt`)."""
    index = {m: i for i, m in enumerate(models)}
    schedule = np.array([(index[b["model_a"]], index[b["model_b"]], int(2 * _outcome(b["winner"])))
                         for b in battles], dtype=np.int32).reshape(-1, 3)
    rows, counts = np.unique(schedule, return_counts=True, axis=0)
    return rows[:, :2], rows[:, 2].astype(np.float64) / 2.0, counts.astype(np.float64)


def _bt_loss_and_grad(ratings, matchups, outcomes, weights, alpha):
    """Negative log-likelihood and gradient; `ratings` and `weights` may carry a leading
    bootstrap axis (R x models, R x rows): the rounds are independent, so one sum fits all."""
    matchup_ratings = ratings[..., matchups]
    logits = alpha * (matchup_ratings[..., 0] - matchup_ratings[..., 1])
    # outcome 0.5 counts a tie as half a win and half a loss; log_expit = log(sigmoid), stable at 0 and 1
    loss = -((log_expit(logits) * outcomes + log_expit(-logits) * (1.0 - outcomes)) * weights).sum()
    matchup_grads = -alpha * (outcomes - expit(logits)) * weights
    grad = np.zeros_like(ratings)
    if ratings.ndim == 1:
        np.add.at(grad, matchups, matchup_grads[:, None] * np.array([1.0, -1.0]))
    else:
        for column, sign in ((0, 1.0), (1, -1.0)):
            np.add.at(grad.T, matchups[:, column], sign * matchup_grads.T)
    return loss, grad


def _fit_bt(matchups, outcomes, weights, n_models: int, alpha: float, tol: float = 1e-6,
            max_iter: int = 100) -> np.ndarray:
    """L-BFGS-B as FastChat's `fit_bt`. With 2-D weights (one row per bootstrap round) all rounds
    are fitted in one call: the objective is a sum of independent terms, and the stopping rule
    (largest gradient entry <= tol) then holds for every round. Done jointly because 1000 separate
    scipy calls cost ~15 s on 2 cores, where FastChat spreads them over a process pool."""
    shape = (n_models,) if weights.ndim == 1 else (weights.shape[0], n_models)

    def objective(flat):
        loss, grad = _bt_loss_and_grad(flat.reshape(shape), matchups, outcomes, weights, alpha)
        return loss, grad.ravel()

    result = minimize(objective, np.zeros(int(np.prod(shape))), jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iter, "gtol": tol})
    return result.x.reshape(shape)


def compute_bt(battles: Sequence[Mapping], scale: float = SCALE, base: float = BASE,
               init_rating: float = INIT_RATING) -> dict[str, float]:
    """Bradley-Terry MLE ratings on the Elo scale (FastChat's `compute_bt`)."""
    models = _models(battles)
    if not models:
        return {}
    matchups, outcomes, weights = _bt_arrays(battles, models)
    ratings = _fit_bt(matchups, outcomes, weights, len(models), math.log(base))
    return {m: float(r * scale + init_rating) for m, r in zip(models, ratings)}


def bootstrap_bt(battles: Sequence[Mapping], rounds: int = N_BOOTSTRAP, seed: int = 0, scale: float = SCALE,
                 base: float = BASE, init_rating: float = INIT_RATING) -> tuple[list[str], np.ndarray, np.ndarray]:
    """BT fitted on `rounds` resamples, drawn as multinomial counts over the distinct rows
    (FastChat's `compute_bootstrap_bt`). Returns (models, the fit on all battles, rounds x models).

    The full-data fit is solved together with the resamples, so all stop by the same rule: when a
    model never lost (or never won) its MLE is infinite and only the stopping rule makes it finite,
    and fitting it separately would put the estimate outside its own interval."""
    models = _models(battles)
    matchups, outcomes, weights = _bt_arrays(battles, models)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(battles), weights / weights.sum(), size=rounds).astype(np.float64)
    rows = np.vstack([weights, counts]) / len(battles)
    fits = _fit_bt(matchups, outcomes, rows, len(models), math.log(base), max_iter=100 * (rounds + 1))
    fits = fits * scale + init_rating
    return models, fits[0], fits[1:]


def bootstrap_elo(battles: Sequence[Mapping], rounds: int = N_BOOTSTRAP, seed: int = 0, k: float = K,
                  scale: float = SCALE, base: float = BASE,
                  init_rating: float = INIT_RATING) -> tuple[list[str], np.ndarray]:
    """Online Elo on `rounds` resamples of the battles drawn with replacement, all resamples
    updated at once (FastChat's `compute_bootstrap_elo` / `fit_vectorized_elo`).
    Returns (models, array rounds x models)."""
    models = _models(battles)
    index = {m: i for i, m in enumerate(models)}
    matchups = np.array([(index[b["model_a"]], index[b["model_b"]]) for b in battles], dtype=np.int64)
    outcomes = np.array([_outcome(b["winner"]) for b in battles])
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(battles), size=(len(battles), rounds))
    alpha = math.log(base) / scale
    ratings = np.zeros((rounds, len(models)))
    columns = np.arange(rounds)
    for step in samples:  # step t of every resample at once
        a, b = matchups[step, 0], matchups[step, 1]
        update = k * (outcomes[step] - expit(alpha * (ratings[columns, a] - ratings[columns, b])))
        ratings[columns, a] += update
        ratings[columns, b] -= update
    return models, ratings + init_rating


def ranks(ci_low: Mapping[str, float], ci_high: Mapping[str, float]) -> dict[str, int]:
    """1 + the number of models whose lower bound is above this model's upper bound."""
    return {m: 1 + sum(bool(ci_low[o] > ci_high[m]) for o in ci_low if o != m) for m in ci_low}


# ---------------------------------------------------------------------------------------------
# Style control (FastChat rating_systems.py `preprocess_for_style` / `fit_contextual_bt`)

STYLE_FEATURES = ("length", "headers", "lists", "bold")  # FastChat's STYLE_CONTROL_ELEMENTS_V1, per side
STYLE_REG = 0.5  # FastChat's L2 penalty on all parameters (its note: half of LogisticRegression's C=1)
_CODE = re.compile(r"```.*?```", re.S)  # FastChat counts markdown outside code blocks
_HEADER = re.compile(r"^#{1,6}\s", re.M)
_LIST = re.compile(r"^\s*(?:\d+\.|[-*+])\s", re.M)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")
# Length in word-like tokens: a run of letters/digits, one CJK character, or one other symbol. FastChat
# counts tiktoken tokens; any monotone length measure serves, since the feature is a normalised difference.
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]|[^\W\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]+|[^\w\s]")


def _answer(battle: Mapping, side: str) -> str | None:
    """The answer of one side: our store's answer_a/answer_b, else FastChat's conversation_a/b
    (all assistant turns, as FastChat sums them over the conversation)."""
    text = battle.get(f"answer_{side}")
    turns = battle.get(f"conversation_{side}")
    if isinstance(text, str) and (text or not isinstance(turns, list)):
        return text  # an empty answer is a real (zero-length) answer
    if isinstance(turns, list):
        return "\n".join(t.get("content") or "" for t in turns
                         if isinstance(t, Mapping) and t.get("role") == "assistant")
    return None


def style_counts(text: str) -> tuple[int, int, int, int]:
    """(length, headers, list items, bold spans) of one answer."""
    plain = _CODE.sub("", text)
    return len(_TOKEN.findall(text)), len(_HEADER.findall(plain)), len(_LIST.findall(plain)), len(_BOLD.findall(plain))


def _metadata_counts(meta: Mapping, side: str) -> tuple[int, ...]:
    """FastChat's conv_metadata: counts are ints or dicts (h1..h6, ordered/unordered, **/__) to sum."""
    def value(key):
        v = meta[key]
        return int(sum(v.values())) if isinstance(v, Mapping) else int(v)
    return tuple(value(k) for k in (f"sum_assistant_{side}_tokens", f"header_count_{side}",
                                    f"list_count_{side}", f"bold_count_{side}"))


def style_matrix(battles: Sequence[Mapping]) -> np.ndarray | None:
    """Battles x 4 standardised style features, or None when some battle has no answers to measure.

    As FastChat: per feature, (a - b) / (a + b + 1), then centred and divided by its standard
    deviation over the battles. A feature that never differs carries no information and is 0
    (FastChat would divide by a zero deviation)."""
    rows = []
    for b in battles:
        meta = b.get("conv_metadata")
        if isinstance(meta, Mapping) and "sum_assistant_a_tokens" in meta:
            a, c = _metadata_counts(meta, "a"), _metadata_counts(meta, "b")
        else:
            text_a, text_b = _answer(b, "a"), _answer(b, "b")
            if text_a is None or text_b is None:
                return None
            a, c = style_counts(text_a), style_counts(text_b)
        rows.append((a, c))
    if not rows:
        return None
    counts = np.array(rows, dtype=np.float64)  # battles x side x feature
    diff = (counts[:, 0] - counts[:, 1]) / (counts[:, 0] + counts[:, 1] + 1.0)
    std = diff.std(axis=0)
    return np.where(std > 0, (diff - diff.mean(axis=0)) / np.where(std > 0, std, 1.0), 0.0)


def _style_loss_and_grad(params, n_models, matchups, features, outcomes, weights, alpha, reg):
    """FastChat's contextual BT loss (L2 penalty reg/2 * |params|^2) with per-battle weights; `params`
    and `weights` may carry a leading bootstrap axis, each round being an independent term."""
    ratings, beta = params[..., :n_models], params[..., n_models:]
    logits = alpha * (ratings[..., matchups[:, 0]] - ratings[..., matchups[:, 1]]) + beta @ features.T
    loss = -((log_expit(logits) * outcomes + log_expit(-logits) * (1.0 - outcomes)) * weights).sum()
    loss += 0.5 * reg * (params * params).sum()
    error = (outcomes - expit(logits)) * weights
    grad = reg * params
    rating_grad = grad[..., :n_models]
    if params.ndim == 1:
        np.add.at(rating_grad, matchups[:, 0], -alpha * error)
        np.add.at(rating_grad, matchups[:, 1], alpha * error)
    else:
        np.add.at(rating_grad.T, matchups[:, 0], -alpha * error.T)
        np.add.at(rating_grad.T, matchups[:, 1], alpha * error.T)
    grad[..., n_models:] -= error @ features
    return loss, grad


@dataclass
class StyleControl:
    """Style-controlled BT on the Elo scale, with bootstrap 95% intervals; `coefficients` are the
    fitted weights of the style features (positive: voters prefer more of it)."""

    ratings: dict[str, float]
    ci: dict[str, tuple[float, float]]
    rank: dict[str, int]
    coefficients: dict[str, float]


def style_control(battles: Sequence[Mapping], rounds: int = N_BOOTSTRAP, seed: int = 0, reg: float = STYLE_REG,
                  scale: float = SCALE, base: float = BASE, init_rating: float = INIT_RATING) -> StyleControl | None:
    """FastChat's `compute_style_control` and `compute_bootstrap_style_control` (resampling battles
    with replacement, here drawn as multinomial counts and fitted in one L-BFGS-B call as `bootstrap_bt`
    does). None when some battle lacks the answers its features come from."""
    battles = list(battles)
    features = style_matrix(battles)
    if features is None:
        return None
    models = _models(battles)
    index = {m: i for i, m in enumerate(models)}
    matchups = np.array([(index[b["model_a"]], index[b["model_b"]]) for b in battles], dtype=np.int64)
    outcomes = np.array([_outcome(b["winner"]) for b in battles])
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(battles), np.full(len(battles), 1.0 / len(battles)), size=rounds)
    weights = np.vstack([np.ones(len(battles)), counts]).astype(np.float64)
    n_params = len(models) + features.shape[1]

    def objective(flat):
        loss, grad = _style_loss_and_grad(flat.reshape(len(weights), n_params), len(models), matchups, features,
                                          outcomes, weights, math.log(base), reg)
        return loss, grad.ravel()

    result = minimize(objective, np.zeros(len(weights) * n_params), jac=True, method="L-BFGS-B",
                      options={"maxiter": 100 * (rounds + 1), "gtol": 1e-6})
    fits = result.x.reshape(len(weights), n_params)
    ratings = fits[:, :len(models)] * scale + init_rating
    low, high = np.percentile(ratings[1:], 2.5, axis=0), np.percentile(ratings[1:], 97.5, axis=0)
    lows, highs = dict(zip(models, low.tolist())), dict(zip(models, high.tolist()))
    return StyleControl(ratings=dict(zip(models, ratings[0].tolist())),
                        ci={m: (lows[m], highs[m]) for m in models}, rank=ranks(lows, highs),
                        coefficients=dict(zip(STYLE_FEATURES, fits[0, len(models):].tolist())))


@dataclass
class LeaderboardRow:
    model: str
    rank: int
    bt: float
    bt_low: float
    bt_high: float
    elo: float
    elo_low: float
    elo_high: float
    battles: int
    wins: int
    ties: int
    losses: int


def battle_counts(battles: Iterable[Mapping]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"battles": 0, "wins": 0, "ties": 0, "losses": 0})
    for b in battles:
        for side, other in (("model_a", "model_b"), ("model_b", "model_a")):
            c = counts[b[side]]
            c["battles"] += 1
            if b["winner"] == side:
                c["wins"] += 1
            elif b["winner"] == other:
                c["losses"] += 1
            else:
                c["ties"] += 1
    return dict(counts)


def leaderboard(battles: Sequence[Mapping], rounds: int = N_BOOTSTRAP, seed: int = 0) -> list[LeaderboardRow]:
    """Elo and BT with percentile 95% bootstrap intervals, ranked by BT intervals, best first."""
    battles = list(battles)
    if not battles:
        return []
    elo = compute_elo(battles)
    models, bt_full, bt_boot = bootstrap_bt(battles, rounds, seed)
    bt = dict(zip(models, bt_full.tolist()))
    _, elo_boot = bootstrap_elo(battles, rounds, seed)
    bt_low, bt_high = np.percentile(bt_boot, 2.5, axis=0), np.percentile(bt_boot, 97.5, axis=0)
    elo_low, elo_high = np.percentile(elo_boot, 2.5, axis=0), np.percentile(elo_boot, 97.5, axis=0)
    lows = dict(zip(models, bt_low))
    highs = dict(zip(models, bt_high))
    rank = ranks(lows, highs)
    counts = battle_counts(battles)
    rows = [LeaderboardRow(model=m, rank=rank[m], bt=bt[m], bt_low=float(bt_low[i]), bt_high=float(bt_high[i]),
                           elo=elo[m], elo_low=float(elo_low[i]), elo_high=float(elo_high[i]), **counts[m])
            for i, m in enumerate(models)]
    return sorted(rows, key=lambda r: (r.rank, -r.bt))


def ratings_json(battles: Sequence[Mapping], rounds: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """The `arena ratings --json` shape: {"elo": {M: R}, "bt": {M: {rating, ci_low, ci_high, rank, battles}}}."""
    rows = leaderboard(battles, rounds, seed)
    style = style_control(battles, rounds, seed)
    return {
        "elo": {r.model: r.elo for r in rows},
        "bt": {r.model: {"rating": r.bt, "ci_low": r.bt_low, "ci_high": r.bt_high, "rank": r.rank,
                         "battles": r.battles} for r in rows},
        "elo_ci": {r.model: [r.elo_low, r.elo_high] for r in rows},
        # FastChat's style control; null when some battle (e.g. an imported log) has no answers to measure
        "style_control": None if style is None else {
            "bt": {m: {"rating": style.ratings[m], "ci_low": style.ci[m][0], "ci_high": style.ci[m][1],
                       "rank": style.rank[m]} for m in style.ratings},
            "coefficients": style.coefficients},
        "n_battles": len(battles),
        "bootstrap_rounds": rounds,
    }


def pairwise_win_fraction(battles: Iterable[Mapping], order: Sequence[str] | None = None):
    """FastChat's `compute_pairwise_win_fraction`: wins of the row model over the column model
    divided by all their battles (ties count as battles, not wins). Returns (models, matrix)
    with NaN where two models never met."""
    battles = list(battles)
    models = list(order) if order is not None else _models(battles)
    index = {m: i for i, m in enumerate(models)}
    wins = np.zeros((len(models), len(models)))
    games = np.zeros_like(wins)
    for b in battles:
        a, c = index.get(b["model_a"]), index.get(b["model_b"])
        if a is None or c is None:
            continue
        games[a, c] += 1
        games[c, a] += 1
        if b["winner"] == "model_a":
            wins[a, c] += 1
        elif b["winner"] == "model_b":
            wins[c, a] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(games > 0, wins / games, np.nan)
    return models, fraction


def win_rate_figure(battles: Sequence[Mapping], order: Sequence[str] | None = None):
    """A matplotlib heatmap of pairwise win fractions (row beats column)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, fraction = pairwise_win_fraction(battles, order)
    size = max(3.5, 1.1 * len(models) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(np.ma.masked_invalid(fraction), cmap="RdBu", vmin=0, vmax=1)
    ax.set_xticks(range(len(models)), models, rotation=45, ha="right")
    ax.set_yticks(range(len(models)), models)
    ax.set_xlabel("opponent")
    ax.set_ylabel("model")
    ax.set_title("Fraction of battles the row model won")
    for i in range(len(models)):
        for j in range(len(models)):
            if not np.isnan(fraction[i, j]):
                dark = abs(fraction[i, j] - 0.5) > 0.3  # white text on the saturated ends of the colour map
                ax.text(j, i, f"{fraction[i, j]:.2f}", ha="center", va="center", fontsize=9,
                        color="white" if dark else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig
