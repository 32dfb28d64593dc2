"""The picture behind DyT: a norm's output against its input is linear per token and
S-shaped over many tokens, because the tokens with the largest entries (carried by a few
outlier channels) have the largest RMS and so the flattest lines.

Per token t, RMSNorm is y = x / r_t (slope 1 / r_t); LayerNorm is y = (x - mu_t) / s_t.
Over all tokens the points fill an S whose envelope is fitted by one global
    DyT:     y = gamma * tanh(alpha * x)
    DyISRU:  y = gamma * x / sqrt(beta + x^2)
(gamma fitted too, as a layer's weight). The second part draws the two functions at matched
slope (u = alpha x, beta = 1 / alpha^2, gamma = sqrt(C)): sqrt(C) - DyT ~ 2 sqrt(C) e^(-2u),
sqrt(C) - DyISRU ~ sqrt(C) / (2 u^2).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .outliers import dyisru, dyt, fit_form, layer_norm, rms_norm, start_values
from .report import save_figure, table_markdown, write_summary, write_table

NAME = "shapes"
SEED = 7

#: size of the synthetic batch: tokens, channels, outlier channels, largest outlier / bulk std
CONFIG = {
    False: {"tokens": 64, "C": 256, "outliers": 4, "reach": 40.0},
    True: {"tokens": 16, "C": 64, "outliers": 2, "reach": 40.0},
}

#: norm name -> (label, function over the last axis)
NORMS = {"layernorm": ("LayerNorm", layer_norm), "rmsnorm": ("RMSNorm", rms_norm)}

#: form name -> (label, function f(x, parameter, gamma), its parameter)
FORMS = {"dyt": ("DyT: γ tanh(αx)", dyt, "alpha"),
         "dyisru": ("DyISRU: γ x / sqrt(β + x²)", dyisru, "beta")}

TAIL_POINTS = (1.0, 2.0, 4.0, 8.0)


# --- the synthetic batch -----------------------------------------------------------------

def outlier_channels(c: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct channel indices, sorted."""
    return np.sort(rng.choice(c, size=k, replace=False))


def synthetic_tokens(cfg: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tokens (n, C) and the outlier channels (k,).

    Bulk: x_tj ~ N(0, s_t^2), s_t log-uniform on [1/2, 2]. Outlier channel number p carries
    ± w_p a_t s_t, w_p from 1 down to 0.4, a_t ~ U(0, reach): the extremes of the batch.
    """
    n, c, k = cfg["tokens"], cfg["C"], cfg["outliers"]
    scale = np.exp(rng.uniform(np.log(0.5), np.log(2.0), n))
    tokens = rng.normal(0.0, 1.0, (n, c)) * scale[:, None]
    channels = outlier_channels(c, k, rng)
    weights = np.linspace(1.0, 0.4, k)
    sizes = rng.uniform(0.0, cfg["reach"], n) * scale
    signs = rng.choice([-1.0, 1.0], size=(n, k))
    tokens[:, channels] = signs * weights * sizes[:, None]
    return tokens, channels


def rank_by_rms(tokens: np.ndarray) -> np.ndarray:
    """Tokens reordered by their RMS r = sqrt(mean x^2), smallest first (steepest line first)."""
    return tokens[np.argsort(np.sqrt(np.mean(tokens**2, axis=-1)))]


# --- fits --------------------------------------------------------------------------------

def fit_global(x: np.ndarray, y: np.ndarray) -> dict[str, dict]:
    """One (parameter, gamma) per form over all points, least squares (scipy's curve_fit)."""
    p0 = start_values(x, y, 1.05 * float(np.max(np.abs(y))))
    return {name: fit_form(name, x, y, p0, bounds=(0.0, np.inf)) for name in FORMS}


def residuals(fit: dict, name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """f(x) - y for a fitted form."""
    _, f, param = FORMS[name]
    return f(x, fit[param], fit["gamma"]) - y


def norm_case(tokens: np.ndarray, channels: np.ndarray, norm_name: str) -> dict:
    """Normalize, fit both forms globally, and measure them on all and on outlier points."""
    y = NORMS[norm_name][1](tokens)
    fits = fit_global(tokens.ravel(), y.ravel())
    mask = np.zeros(tokens.shape, bool)
    mask[:, channels] = True
    for name, fit in fits.items():
        res = np.abs(residuals(fit, name, tokens, y))
        fit.update(mae_outliers=float(res[mask].mean()), mae_bulk=float(res[~mask].mean()),
                   max_abs=float(res.max()))
    slopes = 1.0 / np.sqrt(np.mean(tokens**2, axis=-1))
    return {"y": y, "fits": fits, "slope_min": float(slopes.min()),
            "slope_max": float(slopes.max())}


# --- the functions at matched slope -------------------------------------------------------

def dyt_gap(u: np.ndarray) -> np.ndarray:
    """1 - tanh(u) = 2 / (1 + e^(2u)), without cancellation; ~ 2 e^(-2u)."""
    return 2.0 / (1.0 + np.exp(2.0 * u))


def dyisru_gap(u: np.ndarray) -> np.ndarray:
    """1 - u / sqrt(1 + u^2) = 1 / (sqrt(1 + u^2) (sqrt(1 + u^2) + u)), without cancellation;
    ~ 1 / (2 u^2)."""
    root = np.sqrt(1.0 + u * u)
    return 1.0 / (root * (root + u))


def tail_rows(c: int) -> list[list]:
    """sqrt(C) - f at matched slope, with the asymptotes, at u = TAIL_POINTS."""
    g = np.sqrt(c)
    return [[u, g * dyt_gap(u), 2 * g * np.exp(-2 * u), g * dyisru_gap(u), g / (2 * u * u)]
            for u in TAIL_POINTS]


# --- figures -----------------------------------------------------------------------------

def draw_fits(ax, fits: dict, x_max: float) -> None:
    """The two fitted curves over the data, thick, with their parameters in the legend."""
    grid = np.linspace(-x_max, x_max, 800)
    styles = {"dyt": dict(c="k", lw=2.2), "dyisru": dict(c="C3", lw=2.2, ls="--")}
    for name, (label, f, param) in FORMS.items():
        fit = fits[name]
        ax.plot(grid, f(grid, fit[param], fit["gamma"]), zorder=5, **styles[name],
                label=f"{label}: {param} = {fit[param]:.4g}, γ = {fit['gamma']:.3g}, "
                      f"mean |res| = {fit['mae']:.3g}")


def plot_by_token(tokens: np.ndarray, cases: dict, out: Path) -> Path:
    """Each token a thin line of its own colour (ranked by RMS), the fits on top."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = tokens.shape[0]
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    x_max = 1.05 * float(np.abs(tokens).max())
    for ax, (norm_name, case) in zip(axes, cases.items()):
        for t in range(n):
            order = np.argsort(tokens[t])
            ax.plot(tokens[t, order], case["y"][t, order], "-", c=cmap(t / max(n - 1, 1)),
                    lw=0.8, marker=".", ms=2, alpha=0.8)
        draw_fits(ax, case["fits"], x_max)
        ax.set_title(f"{NORMS[norm_name][0]} over {n} tokens: linear per token, S-shaped overall",
                     fontsize=10)
        ax.set_xlabel("input x (all channels of all tokens)")
        ax.set_ylabel(f"{NORMS[norm_name][0]} output y")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, fontsize=8)
        ax.grid(alpha=0.3)
    bar = fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(1, n)), ax=axes,
                       fraction=0.025, pad=0.02)
    bar.set_label("token, ranked by its RMS (1 = smallest RMS, steepest line)")
    fig.suptitle("A norm's output against its input, coloured by token", y=0.99)
    return save_figure(fig, out, "shapes_by_token")


def plot_by_channel(tokens: np.ndarray, channels: np.ndarray, cases: dict, out: Path) -> Path:
    """Bulk channels grey, each outlier channel its own colour, the fits on top."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bulk = np.setdiff1d(np.arange(tokens.shape[1]), channels)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    x_max = 1.05 * float(np.abs(tokens).max())
    for ax, (norm_name, case) in zip(axes, cases.items()):
        ax.scatter(tokens[:, bulk].ravel(), case["y"][:, bulk].ravel(), s=3, c="0.65",
                   label=f"{bulk.size} ordinary channels")
        for p, j in enumerate(channels):
            ax.scatter(tokens[:, j], case["y"][:, j], s=18, c=f"C{p % 10}", marker="o",
                       edgecolors="k", linewidths=0.3, label=f"outlier channel {j}", zorder=4)
        draw_fits(ax, case["fits"], x_max)
        ax.set_title(f"{NORMS[norm_name][0]}: the extremes, and the S, are the outlier channels",
                     fontsize=10)
        ax.set_xlabel("input x")
        ax.set_ylabel(f"{NORMS[norm_name][0]} output y")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=7.5)
        ax.grid(alpha=0.3)
    fig.suptitle("A norm's output against its input, coloured by channel")
    fig.tight_layout()
    return save_figure(fig, out, "shapes_by_channel")


def plot_functions(c: int, out: Path) -> Path:
    """Left: DyT and DyISRU at matched slope, bounds ±sqrt(C) dashed. Right: sqrt(C) - f."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = np.sqrt(c)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    u = np.linspace(-6, 6, 1201)
    left.plot(u, g * np.tanh(u), c="k", lw=2, label="DyT: √C tanh(u)")
    left.plot(u, g * u / np.sqrt(1 + u * u), c="C3", lw=2, ls="--", label="DyISRU: √C u / √(1 + u²)")
    near = np.abs(u) <= 1.1
    left.plot(u[near], g * u[near], c="0.4", lw=1, ls=":", label="common slope √C u at 0")
    for sign in (1, -1):
        left.axhline(sign * g, c="C0", ls="--", lw=1, label=f"bounds ±√C = ±{g:g}" if sign > 0 else None)
    left.set_ylim(-1.25 * g, 1.25 * g)
    left.set_xlabel("u = αx = x / √β (matched slope: β = 1/α², γ = √C)")
    left.set_ylabel("f(x)")
    left.set_title(f"The two functions at matched slope, C = {c}")
    left.legend(loc="upper left", fontsize=8)
    left.grid(alpha=0.3)

    v = np.linspace(0.05, 12, 600)
    right.semilogy(v, 2 * g * np.exp(-2 * v), c="0.6", lw=7, alpha=0.5,
                   label="asymptote 2√C e^(−2u): exponential")
    right.semilogy(v, g / (2 * v * v), c="salmon", lw=7, alpha=0.5,
                   label="asymptote √C / (2u²): only 1/x²")
    right.semilogy(v, g * dyt_gap(v), c="k", lw=2, label="DyT: √C − f")
    right.semilogy(v, g * dyisru_gap(v), c="C3", lw=2, ls="--", label="DyISRU: √C − f")
    right.set_ylim(1e-10, 2 * g)
    right.set_xlabel("u = αx")
    right.set_ylabel("distance to the bound, √C − f (log scale)")
    right.set_title("How they saturate: DyT exponentially, DyISRU as 1/x²")
    right.legend(loc="lower left", fontsize=8)
    right.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return save_figure(fig, out, "shapes_functions")


# --- outputs ------------------------------------------------------------------------------

FIT_HEADER = ["norm", "form", "fitted parameter", "value", "fitted gamma", "mean abs residual",
              "on outlier channels", "on ordinary channels", "max abs residual"]
TAIL_HEADER = ["u = alpha x", "sqrt(C) - DyT", "2 sqrt(C) e^(-2u)", "sqrt(C) - DyISRU",
               "sqrt(C) / (2 u^2)"]


def fit_rows(cases: dict) -> list[list]:
    return [[norm_name, name, FORMS[name][2], fit[FORMS[name][2]], fit["gamma"], fit["mae"],
             fit["mae_outliers"], fit["mae_bulk"], fit["max_abs"]]
            for norm_name, case in cases.items() for name, fit in case["fits"].items()]


def summary_text(out: Path, cfg: dict, channels: np.ndarray, cases: dict) -> list[str]:
    rms, ln = cases["rmsnorm"], cases["layernorm"]
    fr, fl = rms["fits"], ln["fits"]
    g = np.sqrt(cfg["C"])
    return [
        f"A synthetic batch of {cfg['tokens']} tokens with C = {cfg['C']} channels: each token's "
        f"ordinary channels from N(0, s_t²) with s_t between 1/2 and 2, and {cfg['outliers']} "
        f"outlier channels ({', '.join(map(str, channels))}) carrying values up to "
        f"{cfg['reach']:g} s_t. Per token, RMSNorm is a straight line through 0 of slope 1/r_t "
        f"(here from {rms['slope_min']:.3g} to {rms['slope_max']:.3g}); the tokens with the "
        f"largest entries have the largest RMS and the flattest lines, so over all tokens the "
        f"points fill an S. One global fit over all {cfg['tokens'] * cfg['C']} points (gamma "
        f"fitted too): for RMSNorm DyT has alpha = {fr['dyt']['alpha']:.4g}, gamma = "
        f"{fr['dyt']['gamma']:.4g}, mean absolute residual {fr['dyt']['mae']:.3g} "
        f"({fr['dyt']['mae_outliers']:.3g} on the outlier channels); DyISRU has beta = "
        f"{fr['dyisru']['beta']:.4g}, gamma = {fr['dyisru']['gamma']:.4g}, residual "
        f"{fr['dyisru']['mae']:.3g} ({fr['dyisru']['mae_outliers']:.3g} on the outlier "
        f"channels). LayerNorm looks the same: DyT {fl['dyt']['mae']:.3g}, DyISRU "
        f"{fl['dyisru']['mae']:.3g}. Neither function can follow every token's own line; the fit "
        f"is of the envelope.",
        "![Norm output against input, each token a line coloured by its RMS rank, with the "
        "fitted DyT and DyISRU](shapes_by_token.png)",
        "Coloured by channel: the ordinary channels stay near the origin, where every token's "
        "line is still steep; the extremes of x and y, and so the saturating arms of the S, are "
        "the outlier channels, each tracing its own curve (their sizes differ by a fixed "
        "factor).",
        "![Norm output against input, ordinary channels grey, outlier channels coloured, with "
        "the fitted curves](shapes_by_channel.png)",
        table_markdown(out, "shapes_fit"),
        f"The two functions at matched slope (u = alpha x, beta = 1/alpha², gamma = sqrt(C) = "
        f"{g:g}): both bounded by ±sqrt(C). Near 0 DyISRU leaves the common line first "
        f"(u/sqrt(1+u²) = u - u³/2 + ..., tanh u = u - u³/3 + ...), but in the tail DyT is within "
        f"{g * dyt_gap(8.0):.2g} of its bound at u = 8, DyISRU still {g * dyisru_gap(8.0):.2g} "
        f"away: exponential against 1/x² saturation.",
        "![DyT and DyISRU at matched slope with their bounds (left) and their distance to the "
        "bound on a log scale (right)](shapes_functions.png)",
        table_markdown(out, "shapes_tails"),
    ]


def run(out: Path, *, quick: bool = False, progress=print) -> dict:
    """Synthetic tokens -> both norms -> global fits -> three figures, two tables, summary."""
    out = Path(out)
    cfg = CONFIG[quick]
    tokens, channels = synthetic_tokens(cfg, np.random.default_rng(SEED))
    tokens = rank_by_rms(tokens)
    progress(f"{NAME}: fitting {tokens.size} points per norm")
    cases = {name: norm_case(tokens, channels, name) for name in NORMS}
    write_table(out, "shapes_fit", FIT_HEADER, fit_rows(cases))
    write_table(out, "shapes_tails", TAIL_HEADER, tail_rows(cfg["C"]))
    progress(f"{NAME}: drawing")
    plot_by_token(tokens, cases, out)
    plot_by_channel(tokens, channels, cases, out)
    plot_functions(cfg["C"], out)
    write_summary(out, NAME, summary_text(out, cfg, channels, cases))
    return {"config": cfg, "outlier_channels": channels.tolist(),
            "fits": {n: c["fits"] for n, c in cases.items()},
            "slope_range": {n: [c["slope_min"], c["slope_max"]] for n, c in cases.items()},
            "tails": {f"u={row[0]:g}": {"dyt": row[1], "dyisru": row[3]} for row in tail_rows(cfg["C"])}}
