"""`actlab traits report RUN`: one self-contained HTML page for a trait run:
the judge's decisions, held-out separation per layer and method, the
steering sweep, and per-token monitoring of kept answers."""

from __future__ import annotations

from collections import Counter
from html import escape
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ..errors import ActlabError
from ..store import write_text_atomic
from . import plots
from .html import STYLE, _image, _section, _table


def build_trait_report(run: str | Path, out: str | Path | None = None, model=None, device: str = "auto",
                       method: str = "mean_diff", n_examples: int = 3) -> Path:
    from ..traits.monitor import monitor
    from ..traits.runs import load_vectors, read_answers, run_model, steering_layer, sweep_summary, trait_of

    run = Path(run)
    trait = trait_of(run)
    if not (run / "evaluation.parquet").exists():
        raise ActlabError(f"{run} has no vectors yet; run `actlab traits vectors {run}` first")
    model = model if hasattr(model, "hf_model") else run_model(run, model, device)
    answers = read_answers(run).to_pylist()
    scores_table = pq.read_table(run / "scores.parquet")
    scores = scores_table.to_pylist()
    evaluation = pq.read_table(run / "evaluation.parquet").to_pylist()
    layer = steering_layer(run, method)
    vector = load_vectors(run, method)[layer]
    figures = {"separation.png": plots.separation_by_layer(evaluation, f"{trait.name}: held-out AUROC per layer")}
    sections = [_section("summary", "Trait run", _summary(trait, answers, scores, scores_table.schema.metadata or {})),
                _section("separation", "Held-out separation per layer", _image(figures["separation.png"], "AUROC")
                         + _best_table(evaluation))]
    steering = run / "steering.parquet"
    if steering.exists():
        summary = sweep_summary(pq.read_table(steering))
        figures["steering.png"] = plots.steering_sweep(summary, f"{trait.name}: steering")
        sections.append(_section("steering", "Steering sweep", _image(figures["steering.png"], "steering sweep") +
                                 _table(["coeff", "mean judge score", "scored answers"],
                                        [[f"{r['coeff']:g}", "—" if r["mean_score"] is None else f"{r['mean_score']:.1f}",
                                          str(r["n_scored"])] for r in summary])))
    else:
        sections.append(_section("steering", "Steering sweep", '<p class="note">No sweep yet: '
                                 f"actlab traits steer {escape(str(run))}</p>"))
    examples = _examples(answers, scores, n_examples)
    texts = [a["prompt"] + a["answer"] for a in examples]
    projections = monitor(model, texts, {layer: vector}, prepend_bos=False) if texts else None
    cards = []
    for i, answer in enumerate(examples):
        n_prompt = len(model.tokenizer(answer["prompt"], add_special_tokens=False)["input_ids"])
        tokens, values = projections.tokens[i][n_prompt:], projections.values[layer][i][n_prompt:]
        cards.append(_monitor_card(answer, tokens, values))
        if i == 0:
            figures["monitor.png"] = plots.token_projections(tokens, values, f"row {answer['row']}: projection on "
                                                             f"the block-{layer} {method} vector")
    monitor_html = (f'<p class="meta">Each answer token\'s block-{layer} output projected on the {method} vector '
                    "(red: towards the trait, blue: away); prompts not shown.</p>" + "".join(cards) +
                    (_image(figures["monitor.png"], "per-token projections") if "monitor.png" in figures else ""))
    sections.append(_section("monitoring", "Per-token monitoring", monitor_html))
    out = Path(out) if out is not None else run / "report.html"
    figures_dir = out.parent / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    for name, png in figures.items():
        (figures_dir / name).write_bytes(png)
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>actlab trait report: {escape(trait.name)}</title><style>{STYLE}</style></head><body>"
            f"<h1>actlab trait report: {escape(trait.name)}</h1>{''.join(sections)}</body></html>\n")
    write_text_atomic(out, page)
    return out


def _summary(trait, answers: list[dict], scores: list[dict], judged: dict[bytes, bytes]) -> str:
    decisions = Counter(s["decision"] for s in scores)
    facts = [("trait", trait.name), ("description", trait.description or "—"), ("answers", str(len(answers))),
             ("judge", judged.get(b"actlab.judge", b"not recorded").decode()),
             ("kept", judged.get(b"actlab.keep", b"not recorded").decode()),
             ("layers", "layer L is block L's output (blocks.L.hook_resid_post, HF hidden_states[L + 1])")]
    return (_table(["setting", "value"], [[escape(k), escape(v)] for k, v in facts]) +
            _table(["judge decision", "answers"], [[escape(d), str(n)] for d, n in decisions.most_common()]))


def _best_table(evaluation: list[dict]) -> str:
    from ..traits.vectors import best_layers

    rows = [[escape(m), str(r["layer"]), f"{r['auroc']:.3f}", f"{r['accuracy']:.3f}", f"{r['cohens_d']:.2f}",
             f"{r['n_test_pos']}/{r['n_test_neg']}"] for m, r in best_layers(evaluation).items()]
    return _table(["method", "best layer", "AUROC", "accuracy", "Cohen's d", "held-out pos/neg"], rows)


def _examples(answers: list[dict], scores: list[dict], n: int) -> list[dict]:
    kept = [a for a, s in zip(answers, scores) if s["kept"] and a["answer"].strip()]
    return [a for a in kept if a["polarity"] == "pos"][:n] + [a for a in kept if a["polarity"] == "neg"][:n]


def _monitor_card(answer: dict, tokens: list[str], values: np.ndarray) -> str:
    scale = float(np.abs(values).max()) if len(values) else 1.0
    scale = scale or 1.0
    spans = "".join(
        f'<span class="tok" title="{v:.3g}" style="background: '
        f'{"rgba(220,60,30," if v > 0 else "rgba(40,90,220,"}{abs(v) / scale:.2f})">{escape(t)}</span>'
        for t, v in zip(tokens, values))
    head = f"row {answer['row']} · {answer['polarity']} · {answer['question']}"
    return f'<div class="example"><span class="meta">{escape(head)}</span>\n{spans}</div>'
