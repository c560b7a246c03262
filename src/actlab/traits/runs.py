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

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from ..errors import ActlabError
from ..progress import console
from ..store import (MANIFEST, column_matrix, open_manifest, read_manifest, vector_column, write_json_atomic,
                     write_parquet_atomic)
from .definitions import Trait
from .generation import GenerationConfig, generate, render_prompt
from .judges import Judge, Judgement, describe_judge, judge_fingerprint, keep_answers
from .vectors import METHODS, best_layers, fit_vectors

TRAITS_FORMAT = "actlab.traits"
JUDGE_CHUNK = 64  # answers judged between saves
DEFAULT_POOLINGS = ("response_mean", "response_first:5", "prompt_last", "prompt_mean")


def generate_run(model, trait: Trait, out_dir: str | Path, layers: Sequence[int] | None = None,
                 poolings: Sequence[str] = DEFAULT_POOLINGS, cfg: GenerationConfig | None = None,
                 shard_size: int = 64, overwrite: bool = False, progress: bool = True) -> Path:
    """Answers to every pos / neg prompt with pooled activations at `layers`
    (default: every block), written shard by shard; a rerun resumes."""
    out = Path(out_dir)
    cfg = cfg or GenerationConfig(max_new_tokens=48, temperature=0.7, top_p=0.9)
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    prompts = trait.prompts()
    settings = {"trait": asdict(trait), "model": {"id": model.name, "weights_sha256": model.weight_hash},
                "generation": asdict(cfg), "layers": layers, "poolings": list(poolings), "shard_size": shard_size}
    manifest = open_manifest(out, settings, overwrite, TRAITS_FORMAT)
    n_shards = -(-len(prompts) // shard_size)
    for index in range(n_shards):
        if (out / f"answers-{index:05d}.parquet").exists():
            continue
        lo, hi = index * shard_size, min((index + 1) * shard_size, len(prompts))
        chunk = prompts[lo:hi]
        rendered = [render_prompt(model.tokenizer, p.user, p.system) for p in chunk]
        if progress:
            console.print(f"generating rows {lo}-{hi - 1} of {len(prompts)}")
        gens = generate(model, rendered, layers, poolings, cfg, first_row=lo)
        write_parquet_atomic(out / f"acts-{index:05d}.parquet", _activation_table(gens.pooled, lo))
        table = pa.table({
            "row": np.arange(lo, hi), "polarity": [p.polarity for p in chunk], "pair": [p.pair for p in chunk],
            "system": [p.system for p in chunk], "question": [p.question for p in chunk], "prompt": rendered,
            "answer": gens.answers, "n_prompt_tokens": [len(x) for x in gens.prompt_ids],
            "n_answer_tokens": [len(x) for x in gens.answer_ids], "finished": gens.finished})
        write_parquet_atomic(out / f"answers-{index:05d}.parquet", table)  # last: marks the shard done
    manifest.update(complete=True, n_rows=len(prompts),
                    shards=[f"answers-{i:05d}.parquet" for i in range(n_shards)])
    write_json_atomic(out / MANIFEST, manifest)
    return out


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
    run = Path(run)
    manifest = _manifest(run)
    return pa.concat_tables([pq.read_table(run / name) for name in manifest["shards"]])


def read_activations(run: str | Path, pooling: str) -> dict[int, np.ndarray]:
    """layer -> (rows, d) for one pooling, rows in run order."""
    run = Path(run)
    manifest = _manifest(run)
    if pooling not in manifest["settings"]["poolings"]:
        raise ActlabError(f"this run pooled {', '.join(manifest['settings']['poolings'])}, not '{pooling}'")
    table = pa.concat_tables([pq.read_table(run / name.replace("answers-", "acts-"),
                                            filters=[("pooling", "=", pooling)]) for name in manifest["shards"]])
    layers = table.column("layer").to_numpy()
    return {layer: column_matrix(table.column("activation").filter(pa.array(layers == layer)))
            for layer in manifest["settings"]["layers"]}


def judge_run(run: str | Path, judge: Judge, pos_min: float = 50.0, neg_max: float = 50.0,
              chunk_size: int = JUDGE_CHUNK) -> pa.Table:
    """Score every answer, record each score or its reason and the keep / drop
    decision. Resumable: judgements are saved chunk by chunk under
    RUN/judgements/<judge fingerprint>/, so a rerun with the same judge
    scores only what an interruption left (an answer that changed is scored
    again), and new thresholds call no judge."""
    run = Path(run)
    answers = read_answers(run)
    items = list(zip(answers.column("question").to_pylist(), answers.column("answer").to_pylist()))
    fingerprint = judge_fingerprint(judge)
    judgements: list[Judgement] = []
    for index, lo in enumerate(range(0, len(items), chunk_size)):
        chunk = items[lo:lo + chunk_size]
        path = run / "judgements" / fingerprint / f"chunk-{index:05d}.parquet" if fingerprint else None
        judgements += _saved_judgements(path, chunk) or _judge_chunk(judge, chunk, path)
    decisions = keep_answers(answers.column("polarity").to_pylist(), judgements, pos_min, neg_max)
    table = pa.table({"row": answers.column("row"), "score": pa.array([j.score for j in judgements], pa.float64()),
                      "reason": [j.reason for j in judgements], "decision": decisions,
                      "kept": [d == "kept" for d in decisions]})
    table = table.replace_schema_metadata({"actlab.judge": describe_judge(judge),
                                           "actlab.keep": f"pos score >= {pos_min:g}, neg score < {neg_max:g}"})
    write_parquet_atomic(run / "scores.parquet", table)
    return table


def _answer_hashes(chunk: list[tuple[str, str]]) -> list[str]:
    return [hashlib.sha256(f"{q}\0{a}".encode()).hexdigest()[:16] for q, a in chunk]


def _saved_judgements(path: Path | None, chunk: list[tuple[str, str]]) -> list[Judgement] | None:
    if path is None or not path.exists():
        return None
    saved = pq.read_table(path)
    if saved.column("answer_sha256").to_pylist() != _answer_hashes(chunk):
        return None
    return [Judgement(s, r) for s, r in zip(saved.column("score").to_pylist(), saved.column("reason").to_pylist())]


def _judge_chunk(judge: Judge, chunk: list[tuple[str, str]], path: Path | None) -> list[Judgement]:
    judgements = judge.judge(chunk)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(path, pa.table({"answer_sha256": _answer_hashes(chunk),
                                             "score": pa.array([j.score for j in judgements], pa.float64()),
                                             "reason": [j.reason for j in judgements]}))
    return judgements


def vectors_run(run: str | Path, pooling: str = "response_mean", methods: Sequence[str] = METHODS,
                held_out: float = 0.2, seed: int = 0) -> pa.Table:
    """Vectors per layer and method from the kept answers, evaluated on held-out pairs."""
    run = Path(run)
    if not (run / "scores.parquet").exists():
        raise ActlabError(f"{run} has no scores yet; judge the answers first (actlab traits vectors does)")
    answers, scores = read_answers(run), pq.read_table(run / "scores.parquet")
    kept = scores.column("kept").to_numpy(zero_copy_only=False)
    empty = answers.column("n_answer_tokens").to_numpy() == 0
    keep = kept & ~empty
    all_polarity = np.asarray(answers.column("polarity").to_pylist())
    _check_both_kept(all_polarity, keep, scores.column("decision").to_pylist(), run)
    polarity = all_polarity[keep]
    pairs = answers.column("pair").to_numpy()[keep]
    rows, vectors = [], {m: {} for m in methods}
    for layer, x in read_activations(run, pooling).items():
        for method, (v, ev) in fit_vectors(x[keep], polarity, pairs, held_out, seed, methods).items():
            vectors[method][f"layer_{layer}"] = torch.from_numpy(v)
            rows.append({"layer": layer, "method": method, **asdict(ev)})
    table = pa.Table.from_pylist(rows)
    write_parquet_atomic(run / "evaluation.parquet", table)
    folder = run / "vectors"
    folder.mkdir(exist_ok=True)
    for method, tensors in vectors.items():
        if tensors:
            save_file(tensors, folder / f"{method}.safetensors")
    best = {method: row["layer"] for method, row in best_layers(rows).items()}
    manifest = _manifest(run)
    write_json_atomic(folder / "metadata.json", {
        "trait": manifest["settings"]["trait"]["name"], "model": manifest["settings"]["model"],
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


def load_vectors(run: str | Path, method: str = "mean_diff") -> dict[int, torch.Tensor]:
    path = Path(run) / "vectors" / f"{method}.safetensors"
    if not path.exists():
        raise ActlabError(f"no {method} vectors in {run}; run `actlab traits vectors` first")
    return {int(k.split("_")[1]): v for k, v in load_file(path).items()}


def _manifest(run: Path) -> dict:
    return read_manifest(run, TRAITS_FORMAT)


def steer_sweep(model, run: str | Path, layer: int, coeffs: Sequence[float], judge: Judge,
                method: str = "mean_diff", where: str = "all", n_questions: int | None = None,
                cfg: GenerationConfig | None = None) -> pa.Table:
    """The trait's questions with no instruction, answered with coeff * v added
    at `layer`, for each coefficient; every answer judged. v is the method's
    direction scaled to the length of that layer's mean difference, so coeff 1
    moves an activation by the distance between the pos and neg means. Written
    to RUN/steering.parquet (coeff, question, answer, score, reason)."""
    from .generation import Steering

    run = Path(run)
    vectors = load_vectors(run, method)
    if layer not in vectors:
        raise ActlabError(f"no {method} vector for layer {layer}; this run has layers {sorted(vectors)}")
    scale = load_vectors(run, "mean_diff")[layer].norm() if method != "mean_diff" else vectors[layer].norm()
    v = vectors[layer] / vectors[layer].norm() * scale
    questions = _manifest(run)["settings"]["trait"]["questions"]
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
    write_parquet_atomic(run / "steering.parquet", table)
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
    return Trait(**_manifest(Path(run))["settings"]["trait"])


def best_layer(run: str | Path, method: str = "mean_diff") -> int:
    path = Path(run) / "vectors" / "metadata.json"
    if not path.exists():
        raise ActlabError(f"no vectors in {run}; run `actlab traits vectors` first")
    best = json.loads(path.read_text())["best_layer"]
    if method not in best:
        raise ActlabError(f"no {method} vectors in {run}; have {', '.join(best)}")
    return int(best[method])


def steering_layer(run: str | Path, method: str = "mean_diff", min_auroc: float = 0.9) -> int:
    """Default layer to steer: of the layers whose vector separates held-out
    answers (AUROC >= min_auroc), the one nearest the middle of the captured
    range; middle layers steered the default model far better than the
    detection-best last layers (measured: French score 0 -> 92 at block 15,
    0 -> 27 at block 29, coeff 1). Falls back to best_layer."""
    path = Path(run) / "evaluation.parquet"
    if not path.exists():
        raise ActlabError(f"no vectors in {run}; run `actlab traits vectors` first")
    rows = [r for r in pq.read_table(path).to_pylist() if r["method"] == method and r["auroc"] >= min_auroc]
    if not rows:
        return best_layer(run, method)
    layers = _manifest(Path(run))["settings"]["layers"]
    middle = (min(layers) + max(layers)) / 2
    return min((r["layer"] for r in rows), key=lambda layer: (abs(layer - middle), layer))


def run_model(run: str | Path, name: str | None = None, device: str = "auto"):
    """The run's model (or `name`), refused when its weights differ from the run's."""
    from ..models import load_run_model

    return load_run_model(_manifest(Path(run))["settings"]["model"], name, device)


def run_trait(model, trait: Trait, out_dir: str | Path, judge: Judge | None = None,
              coeffs: Sequence[float] = (-2, -1, 0, 1, 2), layers: Sequence[int] | None = None,
              cfg: GenerationConfig | None = None, held_out: float = 0.2, overwrite: bool = False,
              progress: bool = False) -> dict:
    """Every stage on one trait: generate with capture (`layers`, default
    every block; `cfg`, default sampled as in generate_run), judge (the
    trait's own judge by default), vectors per layer, a steering sweep at the
    default steering layer (greedy, as many new tokens). Returns what each
    stage found."""
    from .judges import make_judge

    if judge is None:
        if not trait.judge:
            raise ActlabError(f"trait '{trait.name}' has no judge of its own; pass one")
        judge = make_judge(trait.judge, trait.eval_prompt)
    start = time.perf_counter()
    run = generate_run(model, trait, out_dir, layers, cfg=cfg, overwrite=overwrite, progress=progress)
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
