"""The paper's outlier demonstration (Stollenwerk's protocol), reproduced, then pushed further.

Protocol of Stollenwerk's code (v1/v2): numpy's legacy RNG seeded with 1 draws one token of
C = 100 channels from N(0, 2) (standard deviation 2), sorted; its largest entry is moved by
+5 S for S = 1..9, one token per S, all else unchanged; LayerNorm (population std, eps = 0,
no affine) gives that channel's output y. The 9 points (x, y) and their mirror (-x, -y) are
fitted by least squares with

    DyT:     y = sqrt(C-1) * tanh(alpha * x)
    DyISRU:  y = sqrt(C-1) * x / sqrt(beta + x^2)

The RMSNorm variant (v3) uses RMSNorm and the bound sqrt(C); there DyISRU with beta = S, the
other channels' sum of squares, is RMSNorm itself (the function-space counterpart, exact), and S does not change
when one entry moves, so one beta fits all 9 tokens exactly.

Further: many tokens, several outlier channels per token, several widths C. A single global
beta is exact only while every fitted point has the same S (RMSNorm) or the same m and Q
(LayerNorm); the table says where DyISRU's advantage over DyT holds and where it breaks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.optimize import curve_fit

from .report import save_figure, table_markdown, write_summary, write_table

NAME = "outliers"

PAPER_C = 100
PAPER_SEED = 1
PAPER_STD = 2.0                      # np.random.normal(0, 2, C): standard deviation 2
STEP = 5.0                           # the outlier moves by +STEP * S
LEVELS = np.arange(1, 10)            # S = 1..9
PAPER_P0 = {"alpha": 0.1, "beta": 800.0}

#: the extension's grid: base tokens, outlier channels per token, widths C.
FURTHER = {
    False: {"tokens": (1, 1000), "outliers": (1, 2, 4, 8), "widths": (64, 256, 1024, 4096)},
    True: {"tokens": (1, 50), "outliers": (1, 4), "widths": (64, 256)},
}

#: residual ratio DyT / DyISRU -> verdict; the first row whose floor the ratio reaches.
VERDICTS = ((1e6, "exact"), (10.0, "holds"), (2.0, "weakened"), (0.0, "lost"))


# --- the norms and the two functions ------------------------------------------------------

def layer_norm(t: np.ndarray) -> np.ndarray:
    """LayerNorm over the last axis: (t - mu) / s, mu the mean, s the population std, eps 0."""
    return (t - t.mean(axis=-1, keepdims=True)) / t.std(axis=-1, keepdims=True)


def rms_norm(t: np.ndarray) -> np.ndarray:
    """RMSNorm over the last axis: t / sqrt(mean(t^2)), eps 0, no weight."""
    return t / np.sqrt(np.mean(t * t, axis=-1, keepdims=True))


def dyt(x, alpha, gamma):
    """DyT: gamma * tanh(alpha * x)."""
    return gamma * np.tanh(alpha * x)


def dyisru(x, beta, gamma):
    """DyISRU: gamma * x / sqrt(beta + x^2)."""
    return gamma * x / np.sqrt(beta + x * x)


def rms_exact(others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shift, beta) that make DyISRU equal RMSNorm: (0, S), S = sum_{j != i} x_j^2."""
    return np.zeros(others.shape[0]), np.sum(others * others, axis=-1)


def ln_exact(others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(m, beta) that make shifted DyISRU equal LayerNorm: m = mean_{j != i} x_j,
    beta = C Q / (C - 1), Q = sum_{j != i} (x_j - m)^2 (the LayerNorm form's function space)."""
    c = others.shape[-1] + 1
    m = others.mean(axis=-1)
    q = np.sum((others - m[:, None]) ** 2, axis=-1)
    return m, c * q / (c - 1)


@dataclass(frozen=True)
class Norm:
    label: str
    normalize: Callable[[np.ndarray], np.ndarray]
    bound: Callable[[int], float]            # gamma of the fitted forms
    exact: Callable[[np.ndarray], tuple]     # others (n, C-1) -> (shift, beta) per token


NORMS = {
    "layernorm": Norm("LayerNorm (paper v1/v2)", layer_norm, lambda c: np.sqrt(c - 1.0), ln_exact),
    "rmsnorm": Norm("RMSNorm (paper v3)", rms_norm, lambda c: np.sqrt(float(c)), rms_exact),
}


# --- tokens and points --------------------------------------------------------------------

def paper_token() -> np.ndarray:
    """The paper's token: after np.random.seed(1), sort(np.random.normal(0, 2, 100)).

    RandomState(1) is the same legacy Mersenne-Twister stream, without touching the global one.
    """
    return np.sort(np.random.RandomState(PAPER_SEED).normal(0, PAPER_STD, PAPER_C))


def shift_outliers(bases: np.ndarray, k: int, amounts: np.ndarray) -> np.ndarray:
    """Tokens (n, C): each sorted base with its k largest entries (the last k) moved by +amount."""
    tokens = bases.copy()
    tokens[:, -k:] += amounts[:, None]
    return tokens


def outlier_points(tokens: np.ndarray, k: int, norm: Norm) -> dict[str, np.ndarray]:
    """Inputs x, outputs y, exact shift and beta of the k outlier channels of every token."""
    y = norm.normalize(tokens)
    c = tokens.shape[-1]
    exact = [norm.exact(np.delete(tokens, c - k + p, axis=-1)) for p in range(k)]
    return {"x": tokens[:, -k:].ravel(), "y": y[:, -k:].ravel(),
            "shift": np.stack([e[0] for e in exact], axis=-1).ravel(),
            "beta": np.stack([e[1] for e in exact], axis=-1).ravel()}


def mirror(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points and their reflection (-x, -y), sorted by x: the paper's 18 points from 9."""
    order = np.argsort(x)
    x, y = x[order], y[order]
    return np.concatenate([-x[::-1], x]), np.concatenate([-y[::-1], y])


# --- fitting -----------------------------------------------------------------------------

#: form name -> (function f(x, parameter, gamma), name of its shape parameter)
FORMS = {"dyt": (dyt, "alpha"), "dyisru": (dyisru, "beta")}


def start_values(x: np.ndarray, y: np.ndarray, gamma: float) -> dict[str, float]:
    """Starting point from the data: beta0 = median of x^2 (gamma^2 / y^2 - 1) (DyISRU
    inverted), alpha0 = 1 / sqrt(beta0) (matched slope at 0), gamma0 = gamma."""
    keep = (y != 0) & (np.abs(y) < gamma)
    beta0 = float(np.median(x[keep] ** 2 * (gamma**2 / y[keep] ** 2 - 1.0)))
    return {"alpha": 1.0 / np.sqrt(beta0), "beta": beta0, "gamma": float(gamma)}


def fit_form(name: str, x: np.ndarray, y: np.ndarray, p0: dict, gamma: float | None = None,
             **options) -> dict:
    """Least-squares fit of y = f(x; p, gamma): p only at a given gamma, (p, gamma) when gamma
    is None; with the mean absolute residual mean|f(x) - y|.

    scipy.optimize.curve_fit is the least-squares fit the paper's code used.
    """
    f, param = FORMS[name]
    if gamma is None:
        (p, g), _ = curve_fit(f, x, y, p0=[p0[param], p0["gamma"]], **options)
    else:
        (p,), _ = curve_fit(lambda t, q: f(t, q, gamma), x, y, p0=[p0[param]], **options)
        g = gamma
    mae = float(np.mean(np.abs(f(x, p, g) - y)))
    return {param: float(p), "gamma": float(g), "mae": mae}


def compare(x: np.ndarray, y: np.ndarray, p0: dict, gamma: float | None = None,
            **options) -> dict:
    """Both forms fitted alike; ratio = DyT's residual / DyISRU's, the latter floored at the
    rounding level eps * max|y| so that an exact fit gives a large finite ratio."""
    dyt_fit, isru_fit = (fit_form(name, x, y, p0, gamma, **options) for name in FORMS)
    floor = np.finfo(float).eps * float(np.max(np.abs(y)))
    return {"alpha": dyt_fit["alpha"], "beta": isru_fit["beta"],
            "gamma_dyt": dyt_fit["gamma"], "gamma_dyisru": isru_fit["gamma"],
            "mae_dyt": dyt_fit["mae"], "mae_dyisru": isru_fit["mae"],
            "ratio": dyt_fit["mae"] / max(isru_fit["mae"], floor)}


def verdict(ratio: float) -> str:
    """The first verdict whose floor the ratio DyT / DyISRU reaches (table VERDICTS)."""
    return next(label for floor, label in VERDICTS if ratio >= floor)


# --- the paper's protocol ----------------------------------------------------------------

def paper_protocol(norm_name: str) -> dict:
    """Section 8 for one norm: 9 tokens, one outlier moved by 5 S, mirrored, fitted from the
    paper's start values; plus the check with the exact (shift, beta) of every token."""
    norm = NORMS[norm_name]
    tokens = shift_outliers(np.tile(paper_token(), (LEVELS.size, 1)), 1, STEP * LEVELS)
    pts = outlier_points(tokens, 1, norm)
    x, y = mirror(pts["x"], pts["y"])
    gamma = norm.bound(PAPER_C)
    fit = compare(x, y, PAPER_P0, gamma)
    exact_fit = dyisru(pts["x"] - pts["shift"], pts["beta"], gamma)
    return {**fit, "x": x, "y": y, "gamma": float(gamma),
            "exact_shift": float(pts["shift"][0]), "exact_beta": float(pts["beta"][0]),
            "exact_constant": bool(np.ptp(pts["beta"]) == 0 and np.ptp(pts["shift"]) == 0),
            "mae_exact": float(np.mean(np.abs(exact_fit - pts["y"])))}


# --- the extension ------------------------------------------------------------------------

def further_bases(n: int, c: int) -> np.ndarray:
    """n sorted base tokens of C channels from N(0, 2), seeded by (n, C)."""
    rng = np.random.default_rng([PAPER_SEED, n, c])
    return np.sort(rng.normal(0.0, PAPER_STD, (n, c)), axis=-1)


def further_tokens(n: int, c: int, k: int) -> np.ndarray:
    """One base token at the 9 levels (n = 1, the paper's design) or n bases, token t at level
    1 + t mod 9; the k outliers move by 5 S sqrt(C / 100), so that x / sqrt(beta) spans the
    same range at every width as in the paper."""
    scale = STEP * np.sqrt(c / PAPER_C)
    if n == 1:
        return shift_outliers(np.tile(further_bases(1, c), (LEVELS.size, 1)), k, scale * LEVELS)
    levels = LEVELS[np.arange(n) % LEVELS.size]
    return shift_outliers(further_bases(n, c), k, scale * levels)


def fixed_and_free(x: np.ndarray, y: np.ndarray, gamma: float) -> dict:
    """Both forms at the derivation's bound gamma, then with gamma fitted too (as a layer's
    learnable weight would); keys of the second set end in _free. Positive parameters."""
    fixed = compare(x, y, start_values(x, y, gamma), gamma, bounds=(0.0, np.inf))
    free = compare(x, y, start_values(x, y, 1.05 * float(np.max(np.abs(y)))),
                   bounds=(0.0, np.inf))
    return {**fixed, "verdict": verdict(fixed["ratio"]),
            **{f"{key}_free": value for key, value in free.items()},
            "verdict_free": verdict(free["ratio"])}


def further_case(norm_name: str, n: int, c: int, k: int) -> dict:
    """Fit one (norm, tokens, outliers, width) case; the spread of the exact beta says why."""
    norm = NORMS[norm_name]
    pts = outlier_points(further_tokens(n, c, k), k, norm)
    x, y = mirror(pts["x"], pts["y"])
    spread = float(np.std(pts["beta"]) / np.mean(pts["beta"]))
    return {"norm": norm_name, "tokens": n, "outliers": k, "C": c, "beta_spread": spread,
            **fixed_and_free(x, y, norm.bound(c))}


def further(quick: bool, progress) -> list[dict]:
    """Every case of the grid FURTHER[quick], both norms."""
    grid = FURTHER[quick]
    rows = []
    for norm_name in NORMS:
        for c in grid["widths"]:
            progress(f"{NAME}: {norm_name}, C = {c}")
            rows += [further_case(norm_name, n, c, k)
                     for n in grid["tokens"] for k in grid["outliers"]]
    return rows


# --- outputs ------------------------------------------------------------------------------

PAPER_HEADER = ["norm", "bound gamma", "fitted alpha (DyT)", "fitted beta (DyISRU)",
                "mean abs residual DyT", "mean abs residual DyISRU", "ratio DyT/DyISRU",
                "exact shift m", "exact beta", "same for all 9 tokens",
                "mean abs residual, exact shift and beta"]

#: column of the full extension table -> key of a case
FURTHER_COLUMNS = {
    "norm": "norm", "base tokens": "tokens", "outliers per token": "outliers", "C": "C",
    "rel. spread of exact beta": "beta_spread",
    "alpha (gamma fixed)": "alpha", "beta (gamma fixed)": "beta",
    "residual DyT (gamma fixed)": "mae_dyt", "residual DyISRU (gamma fixed)": "mae_dyisru",
    "ratio (gamma fixed)": "ratio", "verdict (gamma fixed)": "verdict",
    "alpha (gamma fitted)": "alpha_free", "gamma DyT (fitted)": "gamma_dyt_free",
    "beta (gamma fitted)": "beta_free", "gamma DyISRU (fitted)": "gamma_dyisru_free",
    "residual DyT (gamma fitted)": "mae_dyt_free",
    "residual DyISRU (gamma fitted)": "mae_dyisru_free",
    "ratio (gamma fitted)": "ratio_free", "verdict (gamma fitted)": "verdict_free",
}


def paper_row(name: str, r: dict) -> list:
    return [name, r["gamma"], r["alpha"], r["beta"], r["mae_dyt"], r["mae_dyisru"], r["ratio"],
            r["exact_shift"], r["exact_beta"], "yes" if r["exact_constant"] else "no",
            r["mae_exact"]]


def ratio_grid(rows: list[dict], suffix: str) -> tuple[list[str], list[list]]:
    """Pivot: one row per (norm, tokens, outliers), one column per C, cells 'ratio (verdict)'."""
    widths = sorted({r["C"] for r in rows})
    keys = sorted({(r["norm"], r["tokens"], r["outliers"]) for r in rows},
                  key=lambda key: (list(NORMS).index(key[0]), key[1], key[2]))
    cell = {(r["norm"], r["tokens"], r["outliers"], r["C"]):
            f"{r['ratio' + suffix]:.3g} ({r['verdict' + suffix]})" for r in rows}
    header = ["norm", "base tokens", "outliers per token", *(f"C = {c}" for c in widths)]
    return header, [[*key, *(cell[(*key, c)] for c in widths)] for key in keys]


def plot_paper(paper: dict[str, dict], out: Path) -> Path:
    """Top: the 18 points, both fitted curves and the bound; bottom: |residual| (log)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True,
                             gridspec_kw={"height_ratios": [3, 2]})
    floor = 1e-17
    for col, (name, r) in enumerate(paper.items()):
        top, bottom = axes[0, col], axes[1, col]
        grid = np.linspace(r["x"].min() * 1.1, r["x"].max() * 1.1, 600)
        g = r["gamma"]
        top.axhline(g, ls="--", c="grey", lw=1, label=f"bound ±{g:.4g}")
        top.axhline(-g, ls="--", c="grey", lw=1)
        top.plot(grid, dyt(grid, r["alpha"], g), c="C0", label=f"DyT fit, alpha = {r['alpha']:.4g}")
        top.plot(grid, dyisru(grid, r["beta"], g), c="C3", ls="-.",
                 label=f"DyISRU fit, beta = {r['beta']:.4g}")
        top.plot(r["x"], r["y"], "ko", ms=5, label="norm output (9 tokens, mirrored)")
        top.set_title(NORMS[name].label)
        top.set_ylabel("normalized output y of the outlier channel")
        top.legend(loc="upper left", fontsize=8)
        for f, p, c, label in ((dyt, r["alpha"], "C0", "DyT"), (dyisru, r["beta"], "C3", "DyISRU")):
            res = np.abs(f(r["x"], p, g) - r["y"])
            bottom.semilogy(r["x"], np.maximum(res, floor), "o-", c=c, ms=4,
                            label=f"{label}: mean {np.mean(res):.2g}")
        bottom.set_xlabel("input x of the outlier channel (bulk ~ N(0, 2²))")
        bottom.set_ylabel(f"|fit − y| (floored at {floor:g})")
        bottom.set_ylim(floor / 3, 10)
        bottom.legend(loc="center", fontsize=8)
    fig.suptitle("The paper's outlier demonstration (C = 100): DyT and DyISRU fitted to a norm's output")
    fig.tight_layout()
    return save_figure(fig, out, "outliers_fit")


def plot_ratio_panel(ax, rows: list[dict], suffix: str, cap: float) -> None:
    """Ratio DyT / DyISRU against C on log axes: one line per (tokens, outliers)."""
    outliers = sorted({r["outliers"] for r in rows})
    for (n, k) in sorted({(r["tokens"], r["outliers"]) for r in rows}):
        line = sorted((r["C"], r["ratio" + suffix]) for r in rows
                      if (r["tokens"], r["outliers"]) == (n, k))
        cs, ratios = np.array(line).T
        color = f"C{outliers.index(k)}"
        ax.loglog(cs, np.minimum(ratios, cap), "-o" if n == 1 else "--s", c=color, ms=5,
                  label=f"{n} token{'s' if n > 1 else ''}, {k} outlier{'s' if k > 1 else ''}")
        capped = ratios >= cap
        ax.loglog(cs[capped], np.full(capped.sum(), cap), "^", c=color, ms=12, mfc="none")
    widths = sorted({r["C"] for r in rows})
    ax.axhline(1, c="k", lw=0.8)
    ax.set_xticks(widths, [str(c) for c in widths])
    ax.minorticks_off()
    ax.grid(True, which="major", alpha=0.3)


def plot_further(rows: list[dict], out: Path) -> Path:
    """Residual ratios against C; columns: the norms; rows: gamma fixed, gamma fitted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cap = 1e4
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharey=True, sharex=True)
    modes = (("", "bound fixed at the derivation's gamma"), ("_free", "gamma fitted too"))
    for i, (suffix, mode) in enumerate(modes):
        for j, norm_name in enumerate(NORMS):
            ax = axes[i, j]
            plot_ratio_panel(ax, [r for r in rows if r["norm"] == norm_name], suffix, cap)
            ax.set_title(f"{NORMS[norm_name].label}: {mode}", fontsize=10)
            ax.set_xlabel("channels C" if i == 1 else "")
        axes[i, 0].set_ylabel("mean abs residual DyT / DyISRU\n(> 1: DyISRU fits better)")
    fig.suptitle("Where DyISRU's advantage holds: one global fit over all outlier-channel points")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=9,
               title=f"open triangle: ratio ≥ {cap:g} (exact at float64 rounding), drawn at {cap:g}",
               title_fontsize=9)
    return save_figure(fig, out, "outliers_further")


def count(rows: list[dict], key: str, labels: tuple[str, ...]) -> int:
    return sum(r[key] in labels for r in rows)


def summary_text(out: Path, paper: dict[str, dict], rows: list[dict]) -> list[str]:
    ln, rms = paper["layernorm"], paper["rmsnorm"]
    case = {(r["norm"], r["tokens"], r["outliers"], r["C"]): r for r in rows}
    many, widest = max(r["tokens"] for r in rows), max(r["C"] for r in rows)
    narrow = min(r["C"] for r in rows)
    k_max = max(r["outliers"] for r in rows)
    spread_n, spread_w = (case[("rmsnorm", many, 1, c)] for c in (narrow, widest))
    shared = case[("rmsnorm", 1, k_max, widest)]
    return [
        f"The paper's protocol (C = {PAPER_C}, np.random.seed({PAPER_SEED}), one token from "
        f"N(0, 2) with standard deviation 2, its largest entry moved by +5 S for S = 1..9, "
        f"mirrored to 18 points, fitted with scipy's curve_fit from alpha = 0.1 and beta = 800). "
        f"With LayerNorm and the bound sqrt(C-1): DyT's alpha = {ln['alpha']:.5g} leaves a mean "
        f"absolute residual of {ln['mae_dyt']:.4g}; DyISRU's beta = {ln['beta']:.5g} leaves "
        f"{ln['mae_dyisru']:.3g}, {ln['ratio']:.0f} times smaller. DyISRU is not exact here "
        f"only because the fitted form has no shift: the other channels' mean m = "
        f"{ln['exact_shift']:.4g} and beta = C Q / (C-1) = {ln['exact_beta']:.6g} are the same "
        f"for all 9 tokens, and with them the shifted DyISRU reproduces LayerNorm to "
        f"{ln['mae_exact']:.1e}.",
        f"The RMSNorm variant (paper v3, bound sqrt(C)): DyT's alpha = {rms['alpha']:.5g}, "
        f"residual {rms['mae_dyt']:.4g}; DyISRU's fitted beta = {rms['beta']:.10g} equals the "
        f"other channels' sum of squares S = {rms['exact_beta']:.10g}, which moving one entry "
        f"does not change, so one beta fits all 9 tokens: residual {rms['mae_dyisru']:.1e} "
        f"(float64 rounding), {rms['mae_exact']:.1e} with beta = S itself.",
        "![The 18 points with both fitted curves (top) and the absolute residuals on a log "
        "scale (bottom), LayerNorm left, RMSNorm right](outliers_fit.png)",
        table_markdown(out, "outliers_paper"),
        "Further than the paper: one base token at the 9 levels (the paper's design) or "
        f"{many} random tokens (token t at level 1 + t mod 9), 1 to {k_max} outlier channels "
        "per token (its largest entries, all moved by the same amount), widths C from "
        f"{narrow} to {widest}. The outliers move by 5 S sqrt(C/100), so that they reach the "
        "same depth of saturation at every width; starting values come from the data. Each "
        "case is fitted twice over all its outlier-channel points: with gamma fixed at the "
        "derivation's bound (sqrt(C-1) or sqrt(C), as in the paper) and with gamma fitted too, "
        "as a layer's learnable weight would be. The verdict reads the residual ratio "
        "DyT / DyISRU: exact >= 1e6, holds >= 10, weakened >= 2, lost < 2.",
        f"Where it holds: one token, one outlier (the paper's case): exact with RMSNorm at "
        f"every width, a factor of {min(case[('layernorm', 1, 1, c)]['ratio'] for c in sorted({r['C'] for r in rows})):.3g} "
        f"or more with LayerNorm (no shift in the form). Where it breaks: (a) many tokens: each "
        f"token has its own S, spread {spread_n['beta_spread']:.3g} (relative std) at C = "
        f"{narrow}, {spread_w['beta_spread']:.3g} at C = {widest}, so a global beta is no longer "
        f"exact and the ratio falls to {spread_n['ratio']:.3g} and {spread_w['ratio']:.3g}; "
        f"wider tokens keep more of the advantage. (b) several outliers in a token: each "
        f"outlier's S contains the others, which grow with it, so its output saturates at "
        f"sqrt(C/k), not at the bound sqrt(C) the derivation fixes; with gamma fixed both forms "
        f"fail alike (ratio {shared['ratio']:.3g} at k = {k_max}, C = {widest}). Fitting gamma "
        f"recovers the bound (DyISRU's gamma {shared['gamma_dyisru_free']:.4g} against "
        f"sqrt(C/k) = {np.sqrt(widest / k_max):.4g}) and part of the advantage (ratio "
        f"{shared['ratio_free']:.3g}), but not at C = {narrow} (ratio "
        f"{case[('rmsnorm', 1, k_max, narrow)]['ratio_free']:.3g}), where the outliers' unequal "
        f"starting values are comparable to how far they move, so each follows its own curve.",
        "![Residual ratio DyT / DyISRU against C; solid: one token at 9 levels, dashed: many "
        "tokens; colour: outliers per token; top: gamma fixed, bottom: gamma fitted]"
        "(outliers_further.png)",
        "Ratio DyT / DyISRU with gamma fixed at the bound:",
        table_markdown(out, "outliers_ratio_fixed"),
        "Ratio DyT / DyISRU with gamma fitted too:",
        table_markdown(out, "outliers_ratio_fitted"),
        "Every fitted number of every case (alpha, beta, gamma, residuals, the spread of the "
        "exact beta) is in [outliers_further.md](outliers_further.md) and "
        "[outliers_further.csv](outliers_further.csv).",
    ]


def write_tables(out: Path, paper: dict[str, dict], rows: list[dict]) -> None:
    write_table(out, "outliers_paper", PAPER_HEADER, [paper_row(n, r) for n, r in paper.items()])
    write_table(out, "outliers_further", list(FURTHER_COLUMNS),
                [[r[key] for key in FURTHER_COLUMNS.values()] for r in rows])
    write_table(out, "outliers_ratio_fixed", *ratio_grid(rows, ""))
    write_table(out, "outliers_ratio_fitted", *ratio_grid(rows, "_free"))


def run(out: Path, *, quick: bool = False, progress=print) -> dict:
    """Reproduce section 8 (both norms), run the extension, write figures, tables, summary."""
    out = Path(out)
    paper = {name: paper_protocol(name) for name in NORMS}
    rows = further(quick, progress)
    write_tables(out, paper, rows)
    plot_paper(paper, out)
    plot_further(rows, out)
    write_summary(out, NAME, summary_text(out, paper, rows))
    keep = ("alpha", "beta", "mae_dyt", "mae_dyisru", "ratio", "exact_shift", "exact_beta",
            "exact_constant", "mae_exact")
    return {"paper": {n: {key: r[key] for key in keep} for n, r in paper.items()},
            "further": rows}
