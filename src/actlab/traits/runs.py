"""A trait run on disk: generate (resumable, in shards), judge, fit vectors.

    manifest.json               format "actlab.traits": trait, model, generation settings
    answers-NNNNN.parquet       row, polarity, pair, system, question, prompt, answer,
                                n_prompt_tokens, n_answer_tokens, finished
    acts-NNNNN.parquet          row, pooling, layer, activation (fixed_size_list<float32>[d_model]):
                                one row per answer, pooling and layer
    judgements/<judge>/chunk-NNNNN.parquet   each judge's saved scores (answer_sha256, score, reason)
    scores.parquet              row, score, reason, decision, kept; the judge and the keep rule in its
                                schema metadata (actlab.judge, actlab.keep)
    vectors/<method>.safetensors  "layer_<L>": (d_model,), from the train split
    vectors/metadata.json       what the vectors are, and the best layer per method
    evaluation.parquet          layer, method, accuracy, auroc, cohens_d, n_test_pos, n_test_neg

Layer L is block L's output (blocks.L.hook_resid_post = HF hidden_states[L + 1]).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Sequence

import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import load, save_file

from .. import plots
from ..activations import ExtractStats, column_matrix, summary_html, vector_column
from ..engine import OnBatch, Progress
from ..errors import ActlabError
from ..runs.atomic import atomic_path, write_bytes_atomic, write_json_atomic, write_parquet_atomic
from ..runs.fingerprint import fingerprint
from ..runs.job import ShardJob, ShardWriter
from ..runs.manifest import Run, RunKind, finish_run, read_manifest, register_run_kind
from ..runs.runner import run_job
from ..runs.shards import ShardPlan, read_shards, shard_name
from ..storage import read_parquet, run_path
from .definitions import Trait
from .generation import GenerationConfig, Steering, generate, render_prompt
from .judges import Judge, Judgement, describe_judge, judge_fingerprint, judge_for, keep_answers
from .monitor import monitor
from .vectors import METHODS, best_layers, fit_vectors

if TYPE_CHECKING:
    from ..models import Model

TRAITS_FORMAT = "actlab.traits"
JUDGE_CHUNK = 64  # answers judged between saves
DEFAULT_POOLINGS = ("response_mean", "response_first:5", "prompt_last", "prompt_mean")
STEERING_MIN_AUROC = 0.9
TRAIT_SAMPLING = GenerationConfig(max_new_tokens=48, temperature=0.7, top_p=0.9)  # generate_run's default


class TraitRun(Run):
    """A trait run read back: answers, pooled activations, judge scores,
    vectors and their evaluation, as far as the stages have run."""

    def __init__(self, path: str | Path):
        self.path = run_path(path)
        self.manifest = read_manifest(self.path, TRAITS_FORMAT)

    @property
    def trait(self) -> Trait:
        return Trait(**self.settings["trait"])

    def answers(self) -> pa.Table:
        """row, polarity, pair, system, question, prompt, answer, token counts, finished."""
        return read_shards(self.path, self.manifest["shards"])

    def activations(self, pooling: str) -> dict[int, np.ndarray]:
        """layer -> (rows, d) for one pooling, rows in run order."""
        poolings = self.settings["poolings"]
        if pooling not in poolings:
            raise ActlabError(f"this run pooled {', '.join(poolings)}, not '{pooling}'", param="pooling")
        table = read_shards(self.path, self.manifest["shards"], "acts", filters=[("pooling", "=", pooling)])
        layers = table.column("layer").to_numpy()
        return {layer: column_matrix(table.column("activation").filter(pa.array(layers == layer)))
                for layer in self.settings["layers"]}

    def scores(self) -> pa.Table:
        """row, score, reason, decision, kept (after judging)."""
        return self._table("scores.parquet", "judge the answers first (actlab traits vectors does)")

    def evaluation(self) -> pa.Table:
        """layer, method, accuracy, auroc, cohens_d, held-out counts (after vectors_run)."""
        return self._table("evaluation.parquet", "run `actlab traits vectors` first")

    def vectors(self, method: str = "mean_diff") -> dict[int, torch.Tensor]:
        """{block: (d_model,) vector} of one method (after vectors_run)."""
        path = self.path / "vectors" / f"{method}.safetensors"
        if not path.exists():
            raise ActlabError(f"no {method} vectors in {self.path}; run `actlab traits vectors` first",
                              param="method")
        return {int(k.split("_")[1]): v for k, v in load(path.read_bytes()).items()}

    def _table(self, name: str, fix: str) -> pa.Table:
        if not (self.path / name).exists():
            raise ActlabError(f"{self.path} has no {name} yet; {fix}")
        return read_parquet(self.path / name)

    def to_arrow(self) -> pa.Table:
        """The answers, with their judge scores when judged."""
        table = self.answers()
        if (self.path / "scores.parquet").exists():
            table = table.join(self.scores(), "row")
        return table.sort_by("row")

    def to_pandas(self):
        return self.to_arrow().to_pandas()

    def to_polars(self):
        import polars as pl

        return pl.from_arrow(self.to_arrow())

    def _repr_html_(self) -> str:
        stages = [name for name in ("scores.parquet", "vectors", "evaluation.parquet", "steering.parquet")
                  if (self.path / name).exists()]
        return summary_html("TraitRun", self.summary_rows() + [
            ("trait", self.trait.name), ("answers", str(self.answers().num_rows)),
            ("layers", str(self.settings["layers"])), ("stages done", ", ".join(["generate"] + stages))])


register_run_kind(RunKind(TRAITS_FORMAT, "a trait run", "traits generate", TraitRun,
                          derived=("vectors", "judgements", "figures", "analysis")))


@dataclass
class GenerationJob(ShardJob):
    """Trait generation as a job (actlab.runs.job): shards of the trait's
    prompts, each answered with pooled activations captured while generating.
    Sampling seeds row i by (seed, i), so any shard split samples the same."""

    trait: Trait
    out: Path
    layers: Sequence[int] | None = None  # None: every block
    poolings: Sequence[str] = DEFAULT_POOLINGS
    cfg: GenerationConfig = field(default_factory=lambda: TRAIT_SAMPLING)
    shard_size: int = 64
    FORMAT: ClassVar[str] = TRAITS_FORMAT

    @property
    def plan(self) -> ShardPlan:
        return ShardPlan(len(self.trait.prompts()), self.shard_size, marker="answers")

    def blocks(self, model: "Model") -> list[int]:
        return list(range(model.n_layers)) if self.layers is None else list(self.layers)

    def settings(self, model: "Model", worker: "Model") -> dict:
        return {"trait": asdict(self.trait), "model": {"id": model.name, "weights_sha256": model.weight_hash},
                "generation": asdict(self.cfg), "layers": self.blocks(model), "poolings": list(self.poolings),
                "shard_size": self.shard_size}

    def shard_writer(self, model: "Model", on_batch: OnBatch | None = None) -> ShardWriter:
        prompts, layers, out = self.trait.prompts(), self.blocks(model), self.out

        def process(index: int, lo: int, hi: int) -> ExtractStats:
            started, chunk = time.perf_counter(), prompts[lo:hi]
            rendered = [render_prompt(model.tokenizer, p.user, p.system) for p in chunk]
            gens = generate(model, rendered, layers, self.poolings, self.cfg, first_row=lo, on_batch=on_batch)
            write_parquet_atomic(out / shard_name(index, "acts"), _activation_table(gens.pooled, lo))
            table = pa.table({
                "row": np.arange(lo, hi), "polarity": [p.polarity for p in chunk], "pair": [p.pair for p in chunk],
                "system": [p.system for p in chunk], "question": [p.question for p in chunk], "prompt": rendered,
                "answer": gens.answers, "n_prompt_tokens": [len(x) for x in gens.prompt_ids],
                "n_answer_tokens": [len(x) for x in gens.answer_ids], "finished": gens.finished})
            write_parquet_atomic(out / shard_name(index, "answers"), table)  # last: marks the shard done
            n_tokens = sum(map(len, gens.prompt_ids)) + sum(map(len, gens.answer_ids))
            return ExtractStats(len(chunk), n_tokens, 0, time.perf_counter() - started)
        return process

    def complete(self, manifest: dict, totals: ExtractStats, session: dict, **extras) -> dict:
        return finish_run(self.out, manifest, self.plan.names(), self.plan.n_rows, session, **extras)


def generate_run(model: "Model", trait: Trait, out_dir: str | Path, layers: Sequence[int] | None = None,
                 poolings: Sequence[str] = DEFAULT_POOLINGS, cfg: GenerationConfig | None = None,
                 shard_size: int = 64, overwrite: bool = False, progress: Progress | None = None,
                 runner: str = "local", ray=None) -> Path:
    """Answers to every pos / neg prompt with pooled activations at `layers`
    (default: every block), written shard by shard; a rerun resumes.
    runner="ray" runs the shards on a Ray cluster (`ray`: a RayConfig)."""
    job = GenerationJob(trait, run_path(out_dir), layers, tuple(poolings), cfg or TRAIT_SAMPLING, shard_size)
    run_job(model, job, overwrite, progress, runner, ray)
    return job.out


def _activation_table(pooled: dict[str, dict[int, torch.Tensor]], first_row: int) -> pa.Table:
    parts = []
    for pooling, by_layer in pooled.items():
        for layer, values in by_layer.items():
            n = len(values)
            parts.append(pa.table({"row": pa.array(np.arange(first_row, first_row + n), pa.int64()),
                                   "pooling": pa.array([pooling] * n, pa.string()),
                                   "layer": pa.array(np.full(n, layer), pa.int32()),
                                   "activation": vector_column(values.numpy())}))
    return pa.concat_tables(parts)


def read_answers(run: str | Path) -> pa.Table:
    return TraitRun(run).answers()


def read_activations(run: str | Path, pooling: str) -> dict[int, np.ndarray]:
    """layer -> (rows, d) for one pooling, rows in run order."""
    return TraitRun(run).activations(pooling)


def load_vectors(run: str | Path, method: str = "mean_diff") -> dict[int, torch.Tensor]:
    return TraitRun(run).vectors(method)


def judge_run(run: str | Path, judge: Judge, pos_min: float = 50.0, neg_max: float = 50.0,
              chunk_size: int = JUDGE_CHUNK) -> pa.Table:
    """Score every answer, record each score or its reason and the keep / drop
    decision. Resumable: judgements are saved chunk by chunk under
    RUN/judgements/<judge fingerprint>/, so a rerun with the same judge
    scores only what an interruption left (an answer that changed is scored
    again), and new thresholds call no judge."""
    run = run_path(run)
    answers = read_answers(run)
    items = list(zip(answers.column("question").to_pylist(), answers.column("answer").to_pylist()))
    key = judge_fingerprint(judge)
    judgements: list[Judgement] = []
    for index, lo in enumerate(range(0, len(items), chunk_size)):
        chunk = items[lo:lo + chunk_size]
        path = run / "judgements" / key / f"chunk-{index:05d}.parquet" if key else None
        judgements += _saved_judgements(path, chunk) or _judge_chunk(judge, chunk, path)
    decisions = keep_answers(answers.column("polarity").to_pylist(), judgements, pos_min, neg_max)
    table = pa.table({"row": answers.column("row"), "score": pa.array([j.score for j in judgements], pa.float64()),
                      "reason": [j.reason for j in judgements], "decision": decisions,
                      "kept": [d == "kept" for d in decisions]})
    table = table.replace_schema_metadata({"actlab.judge": describe_judge(judge),
                                           "actlab.keep": f"pos score >= {pos_min:g}, neg score < {neg_max:g}"})
    write_parquet_atomic(run / "scores.parquet", table)
    return table


def _answer_keys(chunk: list[tuple[str, str]]) -> list[str]:
    return [fingerprint(question, answer) for question, answer in chunk]


def _saved_judgements(path: Path | None, chunk: list[tuple[str, str]]) -> list[Judgement] | None:
    if path is None or not path.exists():
        return None
    saved = read_parquet(path)
    if saved.column("answer_sha256").to_pylist() != _answer_keys(chunk):
        return None
    return [Judgement(s, r) for s, r in zip(saved.column("score").to_pylist(), saved.column("reason").to_pylist())]


def _judge_chunk(judge: Judge, chunk: list[tuple[str, str]], path: Path | None) -> list[Judgement]:
    judgements = judge.judge(chunk)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(path, pa.table({"answer_sha256": _answer_keys(chunk),
                                             "score": pa.array([j.score for j in judgements], pa.float64()),
                                             "reason": [j.reason for j in judgements]}))
    return judgements


def vectors_run(run: str | Path, pooling: str = "response_mean", methods: Sequence[str] = METHODS,
                held_out: float = 0.2, seed: int = 0) -> pa.Table:
    """Vectors per layer and method from the kept answers, evaluated on held-out pairs."""
    trait_run = TraitRun(run)
    run = trait_run.path
    answers, scores = trait_run.answers(), trait_run.scores()
    kept = scores.column("kept").to_numpy(zero_copy_only=False)
    empty = answers.column("n_answer_tokens").to_numpy() == 0
    keep = kept & ~empty
    all_polarity = np.asarray(answers.column("polarity").to_pylist())
    _check_both_kept(all_polarity, keep, scores.column("decision").to_pylist(), run)
    polarity = all_polarity[keep]
    pairs = answers.column("pair").to_numpy()[keep]
    rows, vectors = [], {m: {} for m in methods}
    for layer, x in trait_run.activations(pooling).items():
        for method, (v, ev) in fit_vectors(x[keep], polarity, pairs, held_out, seed, methods).items():
            vectors[method][f"layer_{layer}"] = torch.from_numpy(v)
            rows.append({"layer": layer, "method": method, **asdict(ev)})
    table = pa.Table.from_pylist(rows)
    write_parquet_atomic(run / "evaluation.parquet", table)
    folder = run / "vectors"
    folder.mkdir(exist_ok=True)
    for method, tensors in vectors.items():
        if tensors:
            with atomic_path(folder / f"{method}.safetensors") as tmp:
                save_file(tensors, tmp)
    best = {method: row["layer"] for method, row in best_layers(rows).items()}
    write_json_atomic(folder / "metadata.json", {
        "trait": trait_run.trait.name, "model": trait_run.settings["model"],
        "pooling": pooling, "held_out": held_out, "seed": seed, "n_kept_pos": int((polarity == "pos").sum()),
        "n_kept_neg": int((polarity == "neg").sum()), "best_layer": best,
        "layers": "layer L is block L's output: blocks.L.hook_resid_post, HF hidden_states[L + 1]",
        "direction": "from neg to pos; unnormalised (mean_diff keeps the activation scale, probe and pca_diff are "
                     "directions)"})
    return table


def _check_both_kept(polarity: np.ndarray, keep: np.ndarray, decisions: list[str], run: Path) -> None:
    for side in ("pos", "neg"):
        mine = polarity == side
        if mine.any() and not (keep & mine).any():
            reason, count = Counter(d for d, m in zip(decisions, mine) if m).most_common(1)[0]
            raise ActlabError(f"the judge kept no {side} answers ({count} of {int(mine.sum())}: '{reason}'; every "
                              f"decision is in {run / 'scores.parquet'}); use another judge or loosen --pos-min / "
                              "--neg-max")


def steer_sweep(model: "Model", run: str | Path, layer: int, coeffs: Sequence[float], judge: Judge,
                method: str = "mean_diff", where: str = "all", n_questions: int | None = None,
                cfg: GenerationConfig | None = None) -> pa.Table:
    """The trait's questions with no instruction, answered with coeff * v added
    at `layer`, for each coefficient; every answer judged. v is the method's
    direction scaled to the length of that layer's mean difference, so coeff 1
    moves an activation by the distance between the pos and neg means. Written
    to RUN/steering.parquet (coeff, question, answer, score, reason), with the
    score-per-coefficient plot in RUN/steering.png."""
    trait_run = TraitRun(run)
    vectors = trait_run.vectors(method)
    if layer not in vectors:
        raise ActlabError(f"no {method} vector for layer {layer}; this run has layers {sorted(vectors)}",
                          param="layer")
    scale = trait_run.vectors("mean_diff")[layer].norm() if method != "mean_diff" else vectors[layer].norm()
    v = vectors[layer] / vectors[layer].norm() * scale
    questions = trait_run.trait.questions
    if not questions:
        raise ActlabError("steering needs neutral questions; this natural trait gives none (add 'questions')")
    questions = questions[:n_questions] if n_questions else questions
    cfg = cfg or GenerationConfig(max_new_tokens=48)
    prompts = [render_prompt(model.tokenizer, q) for q in questions]
    rows = []
    for coeff in coeffs:
        gens = generate(model, prompts, cfg=cfg, steering=Steering(layer, v, float(coeff), where))
        for question, answer, judgement in zip(questions, gens.answers,
                                               judge.judge(list(zip(questions, gens.answers)))):
            rows.append({"coeff": float(coeff), "question": question, "answer": answer,
                         "score": judgement.score, "reason": judgement.reason})
    table = pa.Table.from_pylist(rows)
    write_parquet_atomic(trait_run.path / "steering.parquet", table)
    title = f"{trait_run.path.name}: layer {layer}, {method}"
    write_bytes_atomic(trait_run.path / "steering.png", plots.steering_sweep(sweep_summary(table), title))
    return table


def sweep_summary(table: pa.Table) -> list[dict]:
    """Mean judge score per coefficient over the scored answers."""
    out = []
    for coeff in sorted(set(table.column("coeff").to_pylist())):
        scores = [s for c, s in zip(table.column("coeff").to_pylist(), table.column("score").to_pylist())
                  if c == coeff and s is not None]
        out.append({"coeff": coeff, "mean_score": float(np.mean(scores)) if scores else None,
                    "n_scored": len(scores)})
    return out


def trait_of(run: str | Path) -> Trait:
    return TraitRun(run).trait


def best_layer(run: str | Path, method: str = "mean_diff") -> int:
    path = run_path(run) / "vectors" / "metadata.json"
    if not path.exists():
        raise ActlabError(f"no vectors in {run}; run `actlab traits vectors` first")
    best = json.loads(path.read_text())["best_layer"]
    if method not in best:
        raise ActlabError(f"no {method} vectors in {run}; have {', '.join(best)}", param="method")
    return int(best[method])


def steering_layer(run: str | Path, method: str = "mean_diff", min_auroc: float = STEERING_MIN_AUROC) -> int:
    """Default layer to steer: of the layers whose vector separates held-out
    answers (AUROC >= min_auroc), the one nearest the middle of the captured
    range; middle layers steered the default model far better than the
    detection-best last layers (measured: French score 0 -> 92 at block 15,
    0 -> 27 at block 29, coeff 1). Falls back to best_layer."""
    trait_run = TraitRun(run)
    rows = [r for r in trait_run.evaluation().to_pylist() if r["method"] == method and r["auroc"] >= min_auroc]
    if not rows:
        return best_layer(run, method)
    layers = trait_run.settings["layers"]
    middle = (min(layers) + max(layers)) / 2
    return min((r["layer"] for r in rows), key=lambda layer: (abs(layer - middle), layer))


def monitored_text(run: str | Path, text: str | None = None, row: int | None = None) -> str:
    """`text`, or row `row`'s prompt + answer; exactly one of them."""
    if (text is None) == (row is None):
        raise ActlabError("give exactly one of --text or --row", param="text")
    if text is not None:
        return text
    answers = TraitRun(run).answers()
    if not 0 <= row < answers.num_rows:
        raise ActlabError(f"--row {row} is outside 0..{answers.num_rows - 1}", param="row")
    return answers.column("prompt")[row].as_py() + answers.column("answer")[row].as_py()


def monitor_run(model: "Model", run: str | Path, text: str | None = None, row: int | None = None,
                layer: int | None = None, method: str = "mean_diff") -> tuple[list[str], np.ndarray, Path]:
    """Per-token projection of a text (or of row `row`'s prompt + answer) onto
    the run's vector at `layer` (default: the best layer of `method`); the plot
    goes to RUN/monitor-layer<L>.png. Returns (tokens, values, plot path)."""
    trait_run = TraitRun(run)
    text = monitored_text(run, text, row)
    layer = best_layer(run, method) if layer is None else layer
    vectors = trait_run.vectors(method)
    if layer not in vectors:
        raise ActlabError(f"no {method} vector for layer {layer}; this run has layers {sorted(vectors)}",
                          param="layer")
    result = monitor(model, [text], {layer: vectors[layer]}, prepend_bos=False)
    tokens, values = result.tokens[0], result.values[layer][0]
    png = trait_run.path / f"monitor-layer{layer}.png"
    write_bytes_atomic(png, plots.token_projections(tokens, values, f"projection on the layer-{layer} {method} vector"))
    return tokens, values, png


def run_trait(model: "Model", trait: Trait, out_dir: str | Path, judge: Judge | None = None,
              coeffs: Sequence[float] = (-2, -1, 0, 1, 2), layers: Sequence[int] | None = None,
              cfg: GenerationConfig | None = None, held_out: float = 0.2, overwrite: bool = False,
              progress: Progress | None = None, runner: str = "local", ray=None) -> dict:
    """Every stage on one trait: generate with capture (`layers`, default
    every block; `cfg`, default sampled as in generate_run; runner="ray": on
    a Ray cluster), judge (the trait's own judge by default), vectors per
    layer, a steering sweep at the default steering layer (greedy, as many
    new tokens). Returns what each stage found."""
    judge = judge or judge_for(trait)
    start = time.perf_counter()
    run = generate_run(model, trait, out_dir, layers, cfg=cfg, overwrite=overwrite, progress=progress,
                       runner=runner, ray=ray)
    generated = time.perf_counter()
    scores = judge_run(run, judge)
    best = best_layers(vectors_run(run, held_out=held_out).to_pylist())["mean_diff"]
    layer = steering_layer(run)
    steer_cfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens if cfg else 48)
    steered = steer_sweep(model, run, layer, coeffs, judge, cfg=steer_cfg)
    sweep = sweep_summary(steered)
    kept = [p for p, k in zip(read_answers(run).column("polarity").to_pylist(), scores.column("kept").to_pylist())
            if k]
    return {"trait": trait.name, "run": str(run), "n_answers": scores.num_rows, "kept_pos": kept.count("pos"),
            "kept_neg": kept.count("neg"), "best_mean_diff": best, "steering_layer": layer, "steering": sweep,
            "steering_questions": steered.num_rows // len(coeffs),
            "seconds_generate": round(generated - start, 1),
            "seconds_total": round(time.perf_counter() - start, 1)}
