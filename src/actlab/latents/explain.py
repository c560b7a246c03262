"""Auto-interpretation of a latents run (`actlab latents explain`,
delphi's method): per latent, an explainer model reads its top windows with
the active tokens marked and says what it responds to; a scorer (the same
kind and model, with a 0-100 prompt) then tells held-out activating windows
from non-activating ones given the explanation (detection) and rightly from
wrongly marked tokens (fuzzing), and does the same for a token-frequency
baseline explanation, so that a score can be compared with what naming the
commonest tokens achieves (actlab.latents.cases says what is shown).

Resumable and keyed like judging: every chunk of latents is saved in a
judges.cache.JudgementCache (explained- and scores- parts) under
RUN/judgements/<key>/ (key: the explainer's and scorers' settings and this
config's), so a rerun with the same settings asks only for latents not yet
done, and a server that drops out loses nothing. RUN/explanations.parquet
holds the latest settings' results, one row per latent:

    sae, latent, explanation, score (= detection_auroc), detection_accuracy, detection_auroc,
    fuzzing_accuracy, fuzzing_auroc, baseline, baseline_score, baseline_detection_accuracy,
    baseline_detection_auroc, baseline_fuzzing_accuracy, baseline_fuzzing_auroc,
    n_activating, n_non_activating, n_unscored, explainer

Accuracies are balanced (a score >= 50 predicts label 1); AUROC over the
0-100 scores. 0.5 is chance for both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..analyses.measures import auroc, balanced_accuracy
from ..engine.batches import Progress
from ..errors import ActlabError
from ..judges import EXPLAINER_KINDS, OPENAI_URL, Judge, describe_judge, judge_fingerprint, make_judge
from ..judges.base import asked_model
from ..judges.cache import JudgementCache
from ..judges.openai import OpenAIServer, server_options
from ..models import Model
from ..runs.atomic import write_parquet_atomic
from ..runs.fingerprint import step_fingerprint
from .cases import LatentCase, latent_case, sae_examples
from .examples import example_activations, window_pool
from .prompts import DETECTION_PROMPT, FUZZING_PROMPT, parse_explanation
from .run import EXPLANATIONS, LatentsRun

EXPLAIN_VERSION = 1
EXPLAIN_CHUNK = 16  # latents asked together between saves
EXPLAINED, SCORES = "explained", "scores"  # the cache's parts: one row per latent (the marker), per scored example
KINDS = ("explained", "baseline")
TASKS = ("detection", "fuzzing")


@dataclass
class ExplainConfig:
    """Who explains and scores which latents, on how many examples."""

    explainer: str = field(default="local", metadata={
        "help": "local (a local model through actlab's generation) or openai (an OpenAI-compatible server, its "
                "key from OPENAI_API_KEY); the same model scores the explanations."})
    explainer_model: str | None = field(default=None, metadata={
        "help": "For local a hub id, folder or alias (default: the default model); for openai the server's "
                "model name."})
    explainer_url: str = field(default=OPENAI_URL, metadata={"help": "OpenAI-compatible base URL for openai."})
    explainer_logprobs: bool = field(default=True, metadata={
        "help": "For openai: score by the reply token's top logprobs (a model whose tokenizer splits numbers "
                "into digits is refused); --no-explainer-logprobs reads the number in the reply's text (such "
                "models, and servers without logprobs such as transformers serve)."})
    explainer_timeout: float = field(default=OpenAIServer.timeout, metadata={
        "help": "For openai: seconds to wait for one reply before asking again (a busy CPU server may need "
                "minutes). Not part of the settings' key: saved results stay valid."})
    explainer_concurrency: int = field(default=OpenAIServer.concurrency, metadata={
        "help": "For openai: requests in flight at once."})
    min_number_mass: float = field(default=0.05, metadata={
        "help": "A scorer's reply counts when its probability of being a number 0-100 is at least this "
                "(trait judges use 0.25; a 135M model rarely puts more than 0.15 on numbers)."})
    sae: str | None = field(default=None, metadata={"help": "The run's SAE to explain (default: each)."})
    latents: list[int] | None = field(default=None, metadata={
        "comma": True, "help": "Latents to explain, e.g. 3,17,42 (default: every active latent)."})
    max_latents: int | None = field(default=None, metadata={
        "help": "Explain this many active latents per SAE, drawn at random (seeded; a larger N keeps the "
                "smaller N's latents)."})
    max_calls: int | None = field(default=None, metadata={
        "help": "Stop before a latent would take the calls (explainer and scorer) past this many."})
    examples: int = field(default=10, metadata={"help": "Top windows shown to the explainer per latent."})
    test_examples: int = field(default=10, metadata={
        "help": "Held-out activating windows per latent (and as many non-activating) for the scores."})
    seed: int = field(default=0, metadata={"help": "Seed of the held-out choice and the wrong marks."})
    input_price: float = field(default=0.0, metadata={"help": "USD per million prompt tokens, for the cost."})
    output_price: float = field(default=0.0, metadata={"help": "USD per million reply tokens, for the cost."})

    def __post_init__(self):
        EXPLAINER_KINDS.pick(self.explainer, "explainer")
        if self.latents is not None and self.max_latents is not None:
            raise ActlabError("pass --latents or --max-latents, not both", param="max_latents")
        for name in ("max_latents", "max_calls", "examples", "test_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ActlabError(f"{name} must be at least 1, not {value}", param=name)
        if not 0 <= self.min_number_mass <= 1:
            raise ActlabError(f"min_number_mass must be in [0, 1], not {self.min_number_mass}",
                              param="min_number_mass")
        if self.input_price < 0 or self.output_price < 0:
            raise ActlabError("prices must be 0 or more", param="input_price")


@dataclass
class ExplainResult:
    """What an explain call did (this call's calls, tokens, time and cost) and the run's explanations."""

    key: str  # the folder under RUN/judgements
    wanted: int  # latents asked for (active ones)
    done: int  # of them, explained under these settings (earlier calls included)
    explained: int  # by this call
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cost: float = 0.0  # USD, by --input-price / --output-price
    stopped: str | None = None  # why latents were left, when some were
    table: pa.Table | None = None  # explanations.parquet


@dataclass
class Askers:
    explainer: object
    detection: Judge
    fuzzing: Judge


def askers(cfg: ExplainConfig, model: Model | None = None) -> Askers:
    """The explainer and the two scorers of `cfg` (a local kind uses `model` where it is the one named)."""
    settings = asked_model(cfg.explainer, cfg.explainer_model, cfg.explainer_url, model, flag="explainer_model")
    settings |= server_options(cfg.explainer, "explainer", timeout=cfg.explainer_timeout,
                               concurrency=cfg.explainer_concurrency)
    scoring = settings | server_options(cfg.explainer, "explainer", logprobs=cfg.explainer_logprobs) | \
        {"min_mass": cfg.min_number_mass}
    explainer = EXPLAINER_KINDS[cfg.explainer].factory(**settings)
    return Askers(explainer, make_judge({"kind": cfg.explainer, **scoring}, DETECTION_PROMPT),
                  make_judge({"kind": cfg.explainer, **scoring}, FUZZING_PROMPT))


def explain_latents(run, model: Model, cfg: ExplainConfig | None = None, saes: dict | None = None,
                    progress: Progress | None = None) -> ExplainResult:
    """Explain and score the latents `cfg` picks (see the module), saving as
    it goes; `model`: the run's model (it recomputes the example windows'
    token values on first use, and is the local explainer when that is the
    default model); `saes`: {name: SAE}, default reloaded from their
    sources; `progress` is told of latents and tokens (prompt and reply)
    done, a chunk of EXPLAIN_CHUNK latents per shard."""
    run = run if isinstance(run, LatentsRun) else LatentsRun.open(run)
    cfg = cfg or ExplainConfig()
    ask = askers(cfg, model)
    key = explain_key(ask, cfg)
    cache = JudgementCache.of(run.path, key, EXPLAINED)
    wanted = [(sae, latent) for sae in ([run.sae_name(cfg.sae)] if cfg.sae else run.saes)
              for latent in chosen_latents(run, sae, cfg)]
    done = saved_latents(cache)
    todo = [pair for pair in wanted if pair not in done]
    result = ExplainResult(key, len(wanted), len(wanted) - len(todo), 0)
    try:
        if todo:
            if progress:
                progress.start(len(todo), -(-len(todo) // EXPLAIN_CHUNK))
            cache.record_settings(_settings(ask, cfg))
            examples, pool = example_activations(run, model, saes), window_pool(run, model, saes)
            data = {sae: sae_examples(run, sae, examples, pool) for sae in {sae for sae, _ in todo}}
            cases = (latent_case(data[sae], j, cfg.examples, cfg.test_examples, cfg.seed) for sae, j in todo)
            _explain(cases, ask, cache, cfg, result, progress)
    finally:  # what is saved is readable, also when a server went away
        result.table = write_explanations(run, cache, describe_judge(ask.explainer))
    return result


def explain_key(ask: Askers, cfg: ExplainConfig) -> str:
    args = {"explainer": judge_fingerprint(ask.explainer), "detection": judge_fingerprint(ask.detection),
            "fuzzing": judge_fingerprint(ask.fuzzing), "examples": cfg.examples,
            "test_examples": cfg.test_examples, "seed": cfg.seed}
    defaults = {"examples": 10, "test_examples": 10, "seed": 0}
    return step_fingerprint(None, "latents.explain", EXPLAIN_VERSION, args, defaults)


def chosen_latents(run: LatentsRun, sae: str, cfg: ExplainConfig) -> list[int]:
    """The active latents `cfg` asks for, in the order they are explained."""
    table = run.latents(sae)
    active = table.column("latent").to_numpy()[table.column("count").to_numpy() > 0]
    if cfg.latents is not None:
        d_sae = run.settings["saes"][sae]["d_sae"]
        outside = [j for j in cfg.latents if not 0 <= j < d_sae]
        if outside:
            raise ActlabError(f"latent {outside[0]} is outside 0..{d_sae - 1} of SAE {sae}", param="latents")
        return [j for j in dict.fromkeys(cfg.latents) if j in set(active.tolist())]
    if cfg.max_latents is None:
        return active.tolist()
    order = np.random.default_rng(cfg.seed).permutation(len(active))
    return active[order[:cfg.max_latents]].tolist()


def saved_latents(cache: JudgementCache) -> set[tuple[str, int]]:
    saved = cache.read(EXPLAINED, columns=["sae", "latent"])
    return set() if saved is None else set(zip(saved.column("sae").to_pylist(), saved.column("latent").to_pylist()))


def _settings(ask: Askers, cfg: ExplainConfig) -> dict:
    return {"explainer": describe_judge(ask.explainer), "detection": describe_judge(ask.detection),
            "fuzzing": describe_judge(ask.fuzzing), "examples": cfg.examples, "test_examples": cfg.test_examples,
            "seed": cfg.seed}


def _explain(cases, ask: Askers, cache: JudgementCache, cfg: ExplainConfig, result: ExplainResult,
             progress) -> None:
    chunk: list[LatentCase] = []
    budget = cfg.max_calls
    for case in cases:
        if budget is not None and case.calls > budget - result.calls - sum(c.calls for c in chunk):
            result.stopped = f"--max-calls {cfg.max_calls} reached"
            break
        chunk.append(case)
        if len(chunk) == EXPLAIN_CHUNK:
            _ask_chunk(chunk, ask, cache, cfg, result, progress)
            chunk = []
    if chunk:
        _ask_chunk(chunk, ask, cache, cfg, result, progress)


def _ask_chunk(chunk: list[LatentCase], ask: Askers, cache: JudgementCache, cfg: ExplainConfig,
               result: ExplainResult, progress) -> None:
    started = time.perf_counter()
    replies = ask.explainer.ask([case.prompt for case in chunk])
    explanations = [parse_explanation(r.text) if r.text else "" for r in replies]
    asked = {task: [] for task in TASKS}  # per task: (case index, kind, example)
    for i, (case, explanation) in enumerate(zip(chunk, explanations)):
        for kind, text in zip(KINDS, (explanation, case.baseline)):
            if text and not replies[i].failed:
                asked["detection"] += [(i, kind, text, example) for example in case.detection]
                asked["fuzzing"] += [(i, kind, text, example) for example in case.fuzzing]
    judged = {task: getattr(ask, task).judge([(text, ex.text) for _, _, text, ex in asked[task]]) for task in TASKS}
    failed = {i for i, r in enumerate(replies) if r.failed} | \
        {asked[task][n][0] for task in TASKS for n, j in enumerate(judged[task]) if j.failed}
    calls = len(chunk) + sum(len(asked[task]) for task in TASKS)
    prompt = sum(r.prompt_tokens for r in replies) + sum(j.prompt_tokens for t in TASKS for j in judged[t])
    completion = sum(r.completion_tokens for r in replies) + sum(j.completion_tokens for t in TASKS for j in judged[t])
    result.calls += calls
    result.prompt_tokens += prompt
    result.completion_tokens += completion
    result.cost += (prompt * cfg.input_price + completion * cfg.output_price) / 1e6
    keep = [i for i in range(len(chunk)) if i not in failed]
    if keep:
        rows = [(asked[task][n], task, judged[task][n]) for task in TASKS for n in range(len(asked[task]))
                if asked[task][n][0] in keep]
        cache.save({SCORES: pa.table({
            "sae": [chunk[a[0]].sae for a, _, _ in rows], "latent": pa.array([chunk[a[0]].latent for a, _, _ in rows],
                                                                               pa.int32()),
            "kind": [a[1] for a, _, _ in rows], "task": [task for _, task, _ in rows],
            "window": pa.array([a[3].window for a, _, _ in rows], pa.int64()),
            "label": pa.array([a[3].label for a, _, _ in rows], pa.int8()),
            "score": pa.array([j.score for _, _, j in rows], pa.float64()), "reason": [j.reason for _, _, j in rows]}),
            EXPLAINED: pa.table({  # the marker
                "sae": [chunk[i].sae for i in keep], "latent": pa.array([chunk[i].latent for i in keep], pa.int32()),
                "explanation": [explanations[i] for i in keep], "baseline": [chunk[i].baseline for i in keep],
                "reply": [replies[i].text for i in keep],
                "n_activating": pa.array([sum(e.label for e in chunk[i].detection) for i in keep], pa.int32()),
                "n_non_activating": pa.array([sum(1 - e.label for e in chunk[i].detection) for i in keep],
                                             pa.int32())})})
    result.explained += len(keep)
    result.done += len(keep)
    result.seconds += time.perf_counter() - started
    if progress:
        progress.advance(len(keep), prompt + completion)
        progress.shard_done()
    if failed:
        reasons = [r.reason for r in replies if r.failed] + [j.reason for t in TASKS for j in judged[t] if j.failed]
        raise ActlabError(f"the explainer or scorer could not be asked ({reasons[0]}); the {result.done} latents "
                          "explained so far are saved, rerun to continue", param="explainer_url")


def write_explanations(run: LatentsRun, cache: JudgementCache, explainer: str) -> pa.Table | None:
    """RUN/explanations.parquet from the saved chunks of one setting (None when there are none)."""
    notes = cache.read(EXPLAINED)
    if notes is None:
        return None
    table = pa.table({**{c: notes.column(c) for c in ("sae", "latent", "explanation")},
                      **explanation_scores(cache.read(SCORES), notes),
                      "baseline": notes.column("baseline"), "n_activating": notes.column("n_activating"),
                      "n_non_activating": notes.column("n_non_activating"),
                      "explainer": pa.array([explainer] * notes.num_rows, pa.string())})
    table = table.sort_by([("sae", "ascending"), ("latent", "ascending")])
    write_parquet_atomic(run.path / EXPLANATIONS, table)
    return table


def explanation_scores(scores: pa.Table, notes: pa.Table) -> dict[str, pa.Array]:
    """Per row of `notes` (sae, latent): score, the detection and fuzzing
    balanced accuracy and AUROC of its explanation and of its baseline, and
    how many held-out examples went unscored."""
    groups: dict[tuple, tuple[list, list]] = {}
    for sae, latent, kind, task, label, score in zip(*(scores.column(c).to_pylist() for c in (
            "sae", "latent", "kind", "task", "label", "score"))):
        labels, values = groups.setdefault((sae, latent, kind, task), ([], []))
        labels.append(label)
        values.append(np.nan if score is None else score)
    columns: dict[str, list] = {}
    unscored = []
    for sae, latent in zip(notes.column("sae").to_pylist(), notes.column("latent").to_pylist()):
        missing = 0
        for kind in KINDS:
            prefix = "" if kind == "explained" else "baseline_"
            for task in TASKS:
                labels, values = (np.asarray(x) for x in groups.get((sae, latent, kind, task), ([], [])))
                scored = ~np.isnan(values) if len(values) else np.zeros(0, bool)
                missing += int((~scored).sum())
                labels, values = labels[scored], values[scored]
                columns.setdefault(f"{prefix}{task}_accuracy", []).append(balanced_accuracy(values >= 50, labels))
                columns.setdefault(f"{prefix}{task}_auroc", []).append(auroc(values, labels))
        unscored.append(missing)
    out = {"score": pa.array(columns["detection_auroc"], pa.float64()),
           "baseline_score": pa.array(columns["baseline_detection_auroc"], pa.float64())}
    out |= {name: pa.array(values, pa.float64()) for name, values in columns.items()}
    return out | {"n_unscored": pa.array(unscored, pa.int32())}
