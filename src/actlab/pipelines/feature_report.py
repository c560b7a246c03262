"""A features run's report and analysis tables (`actlab report`, `actlab
analyze`): everything the page shows is gathered here (the analyses, and,
for token highlighting and SAE quality, passes of the run's model and SAEs),
then actlab.report renders it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..analyses.run import AnalysisConfig, analyze_features
from ..errors import ActlabError
from ..features import FeatureRun
from ..latents import LatentsRun
from ..latents.analysis import analyze_latents
from ..links import neuronpedia_link
from ..models import DEFAULT_DEVICE, Model
from ..report.data import ExampleText, LatentCard, ReportData
from ..report.html import feature_figures, render
from ..report.latents import browser_links
from ..report.page import write_page
from ..runs import open_run
from ..runs.atomic import write_parquet_atomic
from ..saes import load_sae
from ..saes.quality import sae_quality
from ..storage import run_path


@dataclass
class ReportConfig(AnalysisConfig):
    """What a features run's report shows (the analyses' threshold and top, and more)."""

    latents_per_sae: int = field(default=8, metadata={"flag": "--latents",
                                                      "help": "Latents shown with their top texts, per SAE."})
    texts_per_latent: int = field(default=5, metadata={"flag": "--texts", "help": "Top texts per latent."})
    heatmap_latents_per_category: int = field(default=2, metadata={
        "flag": "--heatmap-latents", "help": "Latents per category in the category heatmap."})
    quality_texts: int = field(default=64, metadata={"help": "Texts of the run scored for SAE quality (0: skip)."})
    browser: Path | None = field(default=None, metadata={
        "help": "A latent browser (actlab latents report) of the same SAEs: each latent card links into it."})

    def __post_init__(self):
        super().__post_init__()
        for name in ("latents_per_sae", "texts_per_latent", "heatmap_latents_per_category"):
            if getattr(self, name) < 1:
                raise ActlabError(f"{name} must be at least 1, not {getattr(self, name)}", param=name)
        if self.quality_texts < 0:
            raise ActlabError(f"quality_texts must be 0 or more, not {self.quality_texts}", param="quality_texts")



def build_report(run: str | Path, out: str | Path | None = None, model=None, cfg: ReportConfig | None = None,
                 use_model: bool = True, device: str = DEFAULT_DEVICE) -> Path:
    """Write RUN/report.html (self-contained) and its plots as figures/*.png
    beside it. The model (a Model, a name, or by default the run's own; its
    weights must be the run's) highlights tokens of pooled runs and scores SAE
    quality; use_model=False leaves both out."""
    cfg = cfg or ReportConfig()
    run = run_path(run)
    feats = FeatureRun.open(run)
    if not use_model:
        model = None
    elif not isinstance(model, Model) and (feats.offsets is None or cfg.quality_texts > 0):
        try:
            model = feats.model(model, device)
        except ActlabError as exc:
            raise ActlabError(f"{exc}, or report without it (--no-model)", param=exc.param) from None
    data = collect(run, feats, model, cfg)
    page = run_path(out) if out is not None else run / "report.html"
    if cfg.browser is not None:
        links = browser_links(cfg.browser, page, feats.configs)
        for card in data.cards:
            card.browser = f"{links[card.sae]}{card.latent}" if card.sae in links else None
    figures = feature_figures(data)
    return write_page(page, render(data, figures), figures)


def analyze_run(run: str | Path, cfg: AnalysisConfig | None = None) -> dict[str, list[dict]]:
    """Every feature analysis of a features run, or those a latents run
    answers from its summaries (per window, with explanations), as tables by
    name, also written to RUN/analysis/<table>.parquet."""
    cfg = cfg or AnalysisConfig()
    run = run_path(run)
    opened = open_run(run)
    if isinstance(opened, LatentsRun):
        tables = analyze_latents(opened, cfg.threshold, cfg.top)
    else:
        tables = analyze_features(FeatureRun.open(run), cfg.threshold, cfg.top)
    (run / "analysis").mkdir(exist_ok=True)
    for name, rows in tables.items():
        if rows:
            write_parquet_atomic(run / "analysis" / f"{name}.parquet", pa.Table.from_pylist(rows))
    return tables


def collect(run: Path, feats: FeatureRun, model: Model | None, cfg: ReportConfig) -> ReportData:
    fields = feats.fields
    categories = fields.get("category")
    matrices = {name: feats.per_text(name) for name in feats.names}
    tables = analyze_features(feats, cfg.threshold, cfg.top)
    cards = [card for name in feats.names
             for card in _cards(name, matrices[name], tables, feats, cfg)]
    for card in cards:
        card.examples = _examples(matrices[card.sae][:, card.latent], fields, cfg.texts_per_latent)
    highlighted = _highlight(cards, feats, model)
    heatmaps = {name: category_means(F, categories, cfg.heatmap_latents_per_category)
                for name, F in matrices.items()} if categories is not None else {}
    unit = "texts" if feats.offsets is None else "tokens"
    n_rows = len(feats) if feats.offsets is None else int(feats.offsets[-1])
    frequencies = {name: feats.latent_stats[name].count.numpy() / n_rows for name in feats.names}
    quality = _quality(feats, model, fields["text"][:cfg.quality_texts]) if model is not None else {}
    for name, cfg_ in feats.configs.items():
        held_out = _training_quality(cfg_.source)
        if held_out:
            quality.setdefault(name, {})["held-out text (training report)"] = held_out
    return ReportData(run, feats.manifest, len(feats), feats.names, feats.configs, tables, quality,
                      cards, heatmaps, frequencies, unit, highlighted)


def category_means(F: np.ndarray, categories, per_category: int) -> tuple[list[str], list[int], np.ndarray]:
    """Per category, the latents whose mean in the category most exceeds their
    mean elsewhere; returns (categories, latents, means (n_categories, n_latents))."""
    categories = np.asarray(categories)
    labels = list(dict.fromkeys(categories.tolist()))
    means = np.stack([F[categories == c].mean(axis=0) for c in labels])
    latents: list[int] = []
    for i, c in enumerate(labels):
        outside = F[categories != c].mean(axis=0) if (categories != c).any() else np.zeros(F.shape[1])
        gap = means[i] - outside
        picked = [int(j) for j in np.argsort(-gap, kind="stable") if gap[j] > 0 and int(j) not in latents]
        latents += picked[:per_category]
    return labels, latents, means[:, latents]


def _cards(name: str, F: np.ndarray, tables: dict, feats: FeatureRun, cfg: ReportConfig) -> list[LatentCard]:
    """Specialists first (a true one scores > 0), then the strongest latents."""
    chosen: dict[int, str] = {}
    for row in tables.get("specialists", []):
        if row["sae"] == name and row["specialist"]:
            chosen.setdefault(row["latent"], f"specialist for {row['category']}: on (> {cfg.threshold:g}) "
                                             f"for {row['in_category']} texts inside, {row['out_of_category']} outside")
    peak = F.max(axis=0)
    for j in np.argsort(-peak, kind="stable"):
        if len(chosen) >= cfg.latents_per_sae or peak[j] <= 0:
            break
        chosen.setdefault(int(j), f"among the strongest (max {peak[j]:.3g})")
    npid = feats.configs[name].neuronpedia_id
    count = (F > 0).sum(axis=0)
    return [LatentCard(name, j, why, int(count[j]), float(peak[j]), neuronpedia_link(npid, j))
            for j, why in list(chosen.items())[:cfg.latents_per_sae]]


def _examples(column: np.ndarray, fields: dict, k: int) -> list[ExampleText]:
    order = np.argsort(-column, kind="stable")[:k]
    categories = fields.get("category")
    return [ExampleText(int(i), float(column[i]), categories[i] if categories else None, fields["text"][i])
            for i in order if column[i] > 0]


def _highlight(cards: list[LatentCard], feats: FeatureRun, model: Model | None) -> bool:
    """Per-token values for every example: from the run itself when it is
    per-token, else from one extra pass over the example texts."""
    if feats.offsets is not None:
        offsets, skip = feats.offsets.numpy(), int(feats.has_bos)  # BOS never enters pooling: not shown
        for card in cards:
            values = feats.sparse[card.sae].column(card.latent)
            for ex in card.examples:
                a, b = offsets[ex.text_id] + skip, offsets[ex.text_id + 1]
                ex.tokens, ex.token_values = feats.tokens[a:b], values[a:b].tolist()
        return True
    if model is None or not cards:
        return False
    text_ids = sorted({ex.text_id for card in cards for ex in card.examples})
    saes = _reload_saes(feats, sorted({card.sae for card in cards}))
    per_token = model.features([feats.fields["text"][i] for i in text_ids], saes, pooling="all",
                               max_length=feats.settings.get("max_length"))
    where = {text_id: n for n, text_id in enumerate(text_ids)}
    offsets, skip = per_token.offsets.numpy(), int(per_token.has_bos)
    for card in cards:
        values = per_token.sparse[card.sae].column(card.latent)
        for ex in card.examples:
            n = where[ex.text_id]
            ex.tokens = per_token.tokens[offsets[n] + skip:offsets[n + 1]]
            ex.token_values = values[offsets[n] + skip:offsets[n + 1]].tolist()
    return True


def _reload_saes(feats: FeatureRun, names: list[str]) -> dict:
    saes = {}
    for name in names:
        source = feats.configs[name].source
        try:
            saes[name] = load_sae(source)
        except ActlabError as exc:
            raise ActlabError(f"SAE '{name}' cannot be reloaded from '{source}' ({exc}); "
                              "make it reachable again or report without the model (--no-model)") from None
    return saes


def _quality(feats: FeatureRun, model: Model, texts: list[str]) -> dict[str, dict]:
    if not texts:
        return {}
    saes = _reload_saes(feats, feats.names)
    return {name: {f"this run's first {len(texts)} texts": sae_quality(model, sae, texts)}
            for name, sae in saes.items()}


def _training_quality(source: str) -> dict | None:
    """Held-out metrics from the quality.json that `actlab sae train` writes
    beside the SAE folders (the default SAEs ship one)."""
    folder = Path(source)
    report = folder.parent / "quality.json"
    if not source or not report.is_file():
        return None
    return json.loads(report.read_text()).get("quality", {}).get(folder.name)
