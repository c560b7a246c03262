"""Figures as PNG bytes (matplotlib, no display needed), and the one rule for
highlighting tokens by a value, shared by the CLI and the HTML reports."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from .errors import ActlabError


def token_shades(values: Sequence[float] | np.ndarray, scale: float | None = None) -> list[float]:
    """Each token's highlight in [-1, 1]: its value over `scale` (default: the
    largest magnitude), clipped; the sign says towards (+) or away (-)."""
    values = np.asarray(values, dtype=np.float64)
    scale = float(np.abs(values).max()) if scale is None and len(values) else (scale or 0.0)
    if scale <= 0:
        return [0.0] * len(values)
    return np.clip(values / scale, -1.0, 1.0).tolist()


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ActlabError("the report draws its plots with matplotlib: pip install 'actlab[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def category_heatmap(means: np.ndarray, categories: Sequence[str], latents: Sequence[int], title: str) -> bytes:
    """means: (n_categories, n_latents) mean activation of each latent per
    category, shown per latent as a fraction of its largest category mean."""
    plt = _pyplot()
    peak = means.max(axis=0, keepdims=True)
    shown = np.divide(means, peak, out=np.zeros_like(means), where=peak > 0)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.42 * len(latents) + 2), 0.42 * len(categories) + 1.6))
    image = ax.imshow(shown, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(latents)), [str(j) for j in latents], rotation=90, fontsize=8)
    ax.set_yticks(range(len(categories)), list(categories), fontsize=9)
    ax.set_xlabel("latent")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="mean activation / latent's max", fraction=0.04)
    return _png(fig)


def firing_frequency_histogram(frequencies: dict[str, np.ndarray], unit: str) -> bytes:
    """Histogram of log10 firing frequency per SAE (never-firing latents counted apart)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    bins = np.linspace(-5, 0, 41)
    for name, freq in frequencies.items():
        alive = freq[freq > 0]
        dead = int((freq == 0).sum())
        ax.hist(np.log10(alive), bins=bins, histtype="step", linewidth=1.5,
                label=f"{name} ({dead} never fired)")
    ax.set_xlabel(f"log10 fraction of {unit} on which a latent fires")
    ax.set_ylabel("latents")
    ax.legend(fontsize=8)
    return _png(fig)


def steering_sweep(summary: list[dict], title: str) -> bytes:
    """Mean judge score against the steering coefficient, a line per layer."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for layer in dict.fromkeys(r["layer"] for r in summary):
        points = [(r["coeff"], r["mean_score"]) for r in summary if r["layer"] == layer and r["mean_score"] is not None]
        ax.plot([c for c, _ in points], [s for _, s in points], marker="o", label=f"block {layer}")
    ax.legend(fontsize=8)
    ax.set_xlabel("steering coefficient (x the pos-neg mean distance)")
    ax.set_ylabel("mean judge score")
    ax.set_ylim(-2, 102)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return _png(fig)


def token_projections(tokens: Sequence[str], values: np.ndarray, title: str) -> bytes:
    """One bar per token: its block output projected on the trait vector."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.28 * len(tokens) + 1.5), 3.4))
    ax.bar(range(len(tokens)), values, color=["#d95f02" if v > 0 else "#1b9e77" for v in values])
    ax.set_xticks(range(len(tokens)), [t.replace("\n", "\\n") or "·" for t in tokens], rotation=90, fontsize=7)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel("projection on the trait vector")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def separation_by_layer(evaluation: list[dict], title: str) -> bytes:
    """Held-out AUROC against the layer, one line per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for method in dict.fromkeys(r["method"] for r in evaluation):
        rows = sorted((r["layer"], r["auroc"]) for r in evaluation if r["method"] == method)
        ax.plot([layer for layer, _ in rows], [a for _, a in rows], marker=".", label=method)
    ax.set_xlabel("layer (block output)")
    ax.set_ylabel("held-out AUROC")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def forest_plot(rows: list[dict], title: str) -> bytes:
    """Effect sizes with their intervals: rows of {label, d_z, low, high, significant}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 0.22 * len(rows) + 1.2))
    for i, row in enumerate(rows):
        color = "#d95f02" if row["significant"] else "#7570b3"
        ax.plot([row["low"], row["high"]], [i, i], color=color, linewidth=1.5)
        ax.plot([row["d_z"]], [i], "o", color=color, markersize=4)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_yticks(range(len(rows)), [row["label"] for row in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("paired effect size d_z (95% bootstrap interval); orange: FDR q < 0.05")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def value_heatmap(values: np.ndarray, rows: Sequence[str], columns: Sequence[str], title: str, label: str) -> bytes:
    """A matrix of numbers, each cell annotated."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(columns) + 2), 0.45 * len(rows) + 1.4))
    image = ax.imshow(values, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(columns)), list(columns), fontsize=8)
    ax.set_yticks(range(len(rows)), list(rows), fontsize=8)
    for (i, j), value in np.ndenumerate(values):
        ax.text(j, i, f"{value:g}", ha="center", va="center", fontsize=8, color="white")
    fig.colorbar(image, ax=ax, label=label, fraction=0.04)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def paired_histograms(panels: list[dict], title: str) -> bytes:
    """Per panel {label, first, second, names}: overlaid histograms of both conditions."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 2.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        both = np.concatenate([panel["first"], panel["second"]])
        bins = np.linspace(np.nanmin(both), np.nanmax(both), 25) if np.isfinite(both).any() else 10
        for values, name in zip((panel["first"], panel["second"]), panel["names"]):
            ax.hist(values[np.isfinite(values)], bins=bins, alpha=0.55, label=name)
        ax.set_title(panel["label"], fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def auroc_by_layer(series: dict[str, list[tuple[int, float]]], title: str) -> bytes:
    """Held-out AUROC against the layer, one line per detector."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    for name, points in series.items():
        ax.plot([layer for layer, _ in points], [value for _, value in points], marker="o", label=name)
    ax.axhline(0.5, color="black", linewidth=0.6, linestyle=":")
    ax.set_xlabel("layer (block output)")
    ax.set_ylabel("held-out AUROC")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return _png(fig)


def effect_heatmap(values: np.ndarray, rows: Sequence[str], columns: Sequence[str], title: str, label: str) -> bytes:
    """A matrix of signed effects (NaN: not computed) on a diverging scale
    centred at 0, rows top to bottom, column labels turned for tokens."""
    plt = _pyplot()
    bound = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    fig, ax = plt.subplots(figsize=(max(4.0, 0.32 * len(columns) + 2.5), max(2.2, 0.22 * len(rows) + 1.4)))
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap="RdBu_r", vmin=-bound or -1, vmax=bound or 1)
    ax.set_xticks(range(len(columns)), list(columns), rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), list(rows), fontsize=7)
    fig.colorbar(image, ax=ax, label=label, fraction=0.04)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def attribution_scatter(panels: list[dict], title: str) -> bytes:
    """Per panel {label, exact, estimate, r}: each variant's estimated effect
    against its exact one, the diagonal drawn, the correlation in the title."""
    plt = _pyplot()
    columns = min(3, len(panels))
    grid_rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(grid_rows, columns, figsize=(3.6 * columns, 3.3 * grid_rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        ax.scatter(panel["exact"], panel["estimate"], s=6, alpha=0.6)
        both = np.concatenate([panel["exact"], panel["estimate"]])
        finite = both[np.isfinite(both)]
        low, high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
        ax.plot([low, high], [low, high], color="black", linewidth=0.6, linestyle=":")
        ax.set_xlabel("exact", fontsize=8)
        ax.set_ylabel("estimate", fontsize=8)
        ax.set_title(f"{panel['label']} (r = {panel['r']:.2f})", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def faithfulness_by_size(rows: list[dict], circuit_size: int, title: str) -> bytes:
    """Faithfulness against circuit size (nodes kept, log scale), a line per
    ablation, 1 and 0 drawn, the chosen circuit marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    for how in dict.fromkeys(r["ablation"] for r in rows):
        curve = [r for r in rows if r["ablation"] == how]
        sizes = [max(r["nodes"], 0.8) for r in curve]  # the empty circuit drawn just left of 1
        line, = ax.plot(sizes, [r["faithfulness"] for r in curve], marker="o", markersize=3, label=f"{how} ablation")
        chosen = [r for r in curve if r["nodes"] == circuit_size]
        if chosen:
            ax.scatter([max(circuit_size, 0.8)], [chosen[0]["faithfulness"]], color=line.get_color(), s=60,
                       edgecolor="black", zorder=3)
    ax.axhline(1.0, color="black", linewidth=0.6, linestyle=":")
    ax.axhline(0.0, color="grey", linewidth=0.6, linestyle=":")
    ax.legend(fontsize=8, title=f"circuit: {circuit_size} nodes (ringed)", title_fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("nodes kept (the strongest by |effect|), the rest mean-ablated", fontsize=8)
    ax.set_ylabel("faithfulness", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)
