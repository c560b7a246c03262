"""A trait run's report (`actlab traits report`): the data gathered here (the
run's tables and a monitoring pass of the model over kept answers), then
drawn and rendered by actlab.report.traits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ActlabError
from ..models import DEFAULT_DEVICE, Model
from ..report.page import write_page
from ..report.traits import MonitoredAnswer, TraitReportData, render_trait_report, trait_figures
from ..storage import run_path
from ..traits.fitting import steering_layer
from ..traits.monitor import monitor
from ..traits.run import TraitRun
from ..traits.steering import sweep_summary
from ..traits.vectors import VECTOR_METHODS, best_layers


@dataclass
class TraitReportConfig:
    """What a trait run's report shows."""

    method: str = field(default="mean_diff", metadata={"help": "The vector method shown."})
    examples: int = field(default=3, metadata={"help": "Kept answers per polarity monitored token by token."})

    def __post_init__(self):
        VECTOR_METHODS.pick(self.method, param="method")
        if self.examples < 0:
            raise ActlabError(f"examples must be 0 or more, not {self.examples}", param="examples")


def build_trait_report(run: str | Path, out: str | Path | None = None, model=None, device: str = DEFAULT_DEVICE,
                       cfg: TraitReportConfig | None = None) -> Path:
    """Write RUN/report.html and its figures; `model` (a Model, a name, or the
    run's own by default) monitors the example answers."""
    cfg = cfg or TraitReportConfig()
    trait_run = TraitRun.open(run)
    if not (trait_run.path / "evaluation.parquet").exists():
        raise ActlabError(f"{trait_run.path} has no vectors yet; run `actlab traits vectors {trait_run.path}` first")
    model = model if isinstance(model, Model) else trait_run.model(model, device)
    data = collect_trait_report(trait_run, model, cfg.method, cfg.examples)
    figures = trait_figures(data)
    return write_page(run_path(out) if out is not None else trait_run.path / "report.html",
                      render_trait_report(data, figures), figures)


def collect_trait_report(trait_run: TraitRun, model: Model, method: str, n_examples: int) -> TraitReportData:
    answers = trait_run.answers().to_pylist()
    scores_table = trait_run.scores()
    scores = scores_table.to_pylist()
    evaluation = trait_run.evaluation().to_pylist()
    layer = steering_layer(trait_run.path, method)
    sweep = sweep_summary(trait_run.steering()) if (trait_run.path / "steering.parquet").exists() else None
    examples = _examples(answers, scores, n_examples)
    monitored = []
    if examples:
        projections = monitor(model, [a["prompt"] + a["answer"] for a in examples],
                              {layer: trait_run.vectors(method)[layer]}, prepend_bos=False)
        for i, answer in enumerate(examples):
            n_prompt = len(model.tokenizer(answer["prompt"], add_special_tokens=False)["input_ids"])
            monitored.append(MonitoredAnswer(answer, projections.tokens[i][n_prompt:],
                                             projections.values[layer][i][n_prompt:]))
    return TraitReportData(trait_run.trait, str(trait_run.path), method, layer, answers, scores,
                           scores_table.schema.metadata or {}, evaluation, best_layers(evaluation), sweep, monitored)


def _examples(answers: list[dict], scores: list[dict], n: int) -> list[dict]:
    kept = [a for a, s in zip(answers, scores) if s["kept"] and a["answer"].strip()]
    return [a for a in kept if a["polarity"] == "pos"][:n] + [a for a in kept if a["polarity"] == "neg"][:n]
