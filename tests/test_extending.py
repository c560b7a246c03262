"""docs/architecture.md's "Adding to actlab", followed as written: a new run
kind runs, resumes and opens; a new SAE architecture encodes as its formula
says; a new judge kind is made by name and judges."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import actlab
from actlab.results import ExtractStats
from actlab.runs import RUN_KINDS, Run, RunKind, ShardPlan, register_run_kind, shard_name
from actlab.runs.manifest import model_settings
from actlab.runs.atomic import write_parquet_atomic
from actlab.runs.job import ShardJob
from actlab.runs.manifest import finish_run
from actlab.runs.shards import read_shards
from actlab.runs.runner import RunControl, run_job
from actlab.saes.sae import SAE, SAE_ARCHITECTURES, Architecture, SAEConfig, parameter_shapes
from actlab.tokens import tokenize
from actlab.judges import JUDGE_KINDS, JudgeKind, Judgement, make_judge, register_judge_kind
from conftest import TEXTS


@dataclass
class LengthsJob(ShardJob):
    texts: list[str]
    out: Path
    FORMAT: ClassVar[str] = "example.lengths"

    @property
    def plan(self):
        return ShardPlan(len(self.texts), 4)

    def settings(self, model, worker):
        return {"model": model_settings(model), "n_texts": len(self.texts)}

    def shard_writer(self, worker, on_batch=None):
        def process(index, lo, hi):
            ids = tokenize(worker.tokenizer, self.texts[lo:hi]).ids
            write_parquet_atomic(self.out / shard_name(index), pa.table({"n_tokens": [len(i) for i in ids]}))
            return ExtractStats(hi - lo, sum(map(len, ids)), 0, 0.0)
        return process

    def complete(self, manifest, totals, session, **extras):
        return finish_run(self.out, manifest, self.plan.names(), self.plan.n_rows, session)


class LengthsRun(Run):
    FORMAT: ClassVar[str] = "example.lengths"

    def to_arrow(self):
        return read_shards(self.path, self.manifest["shards"])


def test_a_new_run_kind(tmp_path, tiny_models):
    model = tiny_models["llama"]
    register_run_kind(RunKind("example.lengths", "a lengths run", "lengths", LengthsRun))
    try:
        out = tmp_path / "lengths"
        run_job(model, LengthsJob(TEXTS, out), RunControl())
        run = actlab.open_run(out)
        assert isinstance(run, LengthsRun) and run.manifest["n_rows"] == len(TEXTS)
        got = pa.concat_tables(pq.read_table(out / name) for name in run.manifest["shards"])
        assert got.column("n_tokens").to_pylist() == [len(model.tokenizer(t)["input_ids"]) for t in TEXTS]
        assert LengthsRun.open(out).to_pandas().n_tokens.tolist() == got.column("n_tokens").to_pylist()
        assert run.to_polars().height == len(TEXTS)
        (out / shard_name(1)).unlink()  # resumes like every kind
        written = json.loads((out / "manifest.json").read_text())
        (out / "manifest.json").write_text(json.dumps({**written, "complete": False}))
        run_job(model, LengthsJob(TEXTS, out), RunControl())
        assert (out / shard_name(1)).exists() and actlab.open_run(out).manifest["complete"]
    finally:
        RUN_KINDS.pop("example.lengths")


def test_a_new_sae_architecture():
    def _leaky(sae, x):
        return torch.nn.functional.leaky_relu(sae.pre_activations(x), 0.01)

    SAE_ARCHITECTURES.register("leaky", Architecture(("b_enc",), _leaky))
    try:
        gen = torch.Generator().manual_seed(0)
        cfg = SAEConfig(d_in=64, d_sae=128, architecture="leaky", hook_name="blocks.1.hook_resid_post")
        weights = {name: torch.randn(shape, generator=gen) for name, shape in parameter_shapes("leaky", 64, 128).items()}
        sae = SAE(cfg, weights)
        x = torch.randn(5, 64, generator=gen)
        pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
        expected = np.where(pre.numpy() > 0, pre.numpy(), 0.01 * pre.numpy())
        assert np.allclose(sae.encode(x).numpy(), expected, rtol=1e-5, atol=1e-5)
        f, x_hat = sae.reconstruct(x)
        assert torch.allclose(x_hat, f @ weights["W_dec"] + weights["b_dec"], rtol=1e-5, atol=1e-5)
    finally:
        SAE_ARCHITECTURES.pop("leaky")


def test_a_new_judge_kind():
    @dataclass
    class LengthJudge:
        per_char: float = 1.0

        def judge(self, items):
            return [Judgement(min(100.0, self.per_char * len(answer))) for _, answer in items]

    register_judge_kind(JudgeKind("length", LengthJudge))
    try:
        judge = make_judge({"kind": "length", "per_char": 2.0})
        assert [j.score for j in judge.judge([("q", "abc"), ("q", "x" * 80)])] == [6.0, 100.0]
        assert actlab.traits.JudgeConfig(judge="length").judge == "length"  # --judge length is valid now
    finally:
        JUDGE_KINDS.pop("length")
