"""Training SAEs for a model with SAELens's trainer on activations cached by
the engine in a resumable activation run (`actlab sae train`): the default
SAEs were made this way."""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
from safetensors.torch import load_file, save_file

from .activations import extract_run
from .engine import ExtractConfig
from .errors import ActlabError
from .hooks import block_hook
from .inputs import Records
from .runs import open_run
from .runs.atomic import atomic_path, write_json_atomic
from .saes import load_sae
from .saes.quality import sae_quality

if TYPE_CHECKING:
    from .models import Model


@dataclass
class TrainConfig:
    """TopK SAEs for some blocks, trained with SAELens's trainer."""

    layers: list[int] = field(metadata={"comma": True, "help": "Comma-separated block indices, e.g. 7,15,22."})
    d_sae: int = field(default=2048, metadata={"help": "Latents per SAE."})
    k: int = field(default=32, metadata={"help": "Active latents per token (TopK)."})
    steps: int = field(default=600, metadata={"help": "Training steps."})
    batch_size: int = field(default=4096, metadata={"help": "Activations per step."})
    lr: float = field(default=4e-4, metadata={"help": "Learning rate (Adam)."})
    max_length: int = field(default=128, metadata={"help": "Tokens per text."})
    held_out_fraction: float = field(default=0.1, metadata={"help": "Fraction of texts held out for quality."})
    max_eval_texts: int = field(default=1000, metadata={
        "help": "Held-out texts scored (three full forward passes each)."})
    dead_feature_window: int = field(default=25, metadata={
        "help": "Steps without firing (about 100k tokens) before TopK's auxiliary loss revives a latent."})
    seed: int = field(default=0, metadata={"help": "Seed of the split, the shuffle and the initialisation."})
    dtype: str = field(default="float16", metadata={
        "flag": "--sae-dtype", "help": "Stored weights: float16, bfloat16 or float32 (encode runs in float32)."})
    hook_kind: str = field(default="hook_resid_post", metadata={
        "help": "Which block hook: hook_resid_post, hook_resid_pre, hook_resid_mid, hook_mlp_out, hook_attn_out."})

    def __post_init__(self):
        self.layers = [int(layer) for layer in self.layers]
        if not self.layers:
            raise ActlabError("give at least one layer to train an SAE on", param="layers")
        for name in ("d_sae", "k", "steps", "batch_size", "max_length", "max_eval_texts", "dead_feature_window"):
            if getattr(self, name) < 1:
                raise ActlabError(f"{name} must be at least 1, not {getattr(self, name)}", param=name)
        if self.k > self.d_sae:
            raise ActlabError(f"k ({self.k}) cannot exceed d_sae ({self.d_sae})", param="k")
        if not self.lr > 0:
            raise ActlabError(f"lr must be positive, not {self.lr}", param="lr")
        if not 0 < self.held_out_fraction < 1:
            raise ActlabError(f"held_out_fraction must be in (0, 1), not {self.held_out_fraction}",
                              param="held_out_fraction")
        if self.dtype not in ("float16", "bfloat16", "float32"):
            raise ActlabError(f"dtype must be float16, bfloat16 or float32, not '{self.dtype}'", param="dtype")


def read_corpus(paths: Sequence[str | Path], min_chars: int = 20) -> list[str]:
    """Texts from plain-text files: paragraphs separated by blank lines or by
    '%' lines (the fortune format), inner line breaks kept as spaces."""
    texts = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ActlabError(f"corpus file not found: {path}")
        raw = path.read_text(encoding="utf-8", errors="replace")
        for block in re.split(r"\n\s*%\s*\n|\n\s*\n", raw):
            text = " ".join(line.strip() for line in block.splitlines() if line.strip())
            if len(text) >= min_chars:
                texts.append(text)
    if not texts:
        raise ActlabError("the corpus holds no texts of at least 20 characters")
    return list(dict.fromkeys(texts))  # drop repeats, keep order


def split_texts(texts: list[str], held_out_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    shuffled = texts[:]
    random.Random(seed).shuffle(shuffled)
    n_held = max(1, int(len(shuffled) * held_out_fraction))
    return shuffled[n_held:], shuffled[:n_held]


def cache_activations(model: "Model", texts: list[str], hooks: list[str], max_length: int,
                      run_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """Per-token activations at `hooks`, with a BOS prepended (SAELens's
    default) and the BOS rows dropped: it is an attention sink with an
    outsized norm and never enters actlab's pooling. With run_dir, the
    activations go through a resumable extraction run there, so retraining
    with other settings reuses them."""
    cfg = ExtractConfig(hooks, pooling="all", prepend_bos=True, max_length=max_length)
    if run_dir is None:
        acts = model.extract(texts, hooks, cfg=cfg)
    else:
        acts = open_run(extract_run(model, Records.of(texts), run_dir, cfg))
    keep = torch.ones(len(acts.tokens), dtype=torch.bool)
    keep[acts.offsets[:-1]] = False
    return {hook: acts[hook][keep] for hook in hooks}


def batches(x: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    while True:
        for index in torch.randperm(len(x), generator=generator).split(batch_size):
            if len(index) == batch_size:
                yield x[index]


def train_one(x: torch.Tensor, hook: str, cfg: TrainConfig, model_name: str, out: Path) -> Path:
    """Train one TopK SAE on x (n, d_in) with SAELens and save it in SAELens format."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(cfg.seed)
    sae_cfg = TopKTrainingSAEConfig(
        d_in=x.shape[1], d_sae=cfg.d_sae, k=cfg.k, rescale_acts_by_decoder_norm=True,
        apply_b_dec_to_input=True,
        metadata=SAEMetadata(model_name=model_name, hook_name=hook, prepend_bos=True,
                             context_size=cfg.max_length))
    sae = TopKTrainingSAE(sae_cfg)
    with torch.no_grad():  # start b_dec at the data mean, as most trainers do
        sae.b_dec.copy_(x[:100_000].mean(0))
    trainer_cfg = SAETrainerConfig(total_training_samples=cfg.steps * cfg.batch_size,
                                   train_batch_size_samples=cfg.batch_size, lr=cfg.lr,
                                   lr_warm_up_steps=min(100, cfg.steps // 10),
                                   lr_decay_steps=cfg.steps // 5, lr_end=cfg.lr / 10,
                                   dead_feature_window=cfg.dead_feature_window, device="cpu")
    trained = SAETrainer(trainer_cfg, sae, batches(x, cfg.batch_size, cfg.seed)).fit()
    out.mkdir(parents=True, exist_ok=True)
    trained.save_inference_model(out)
    _store_as(out, cfg.dtype)
    return out


def _store_as(folder: Path, dtype: str) -> None:
    """Rewrite the weights in `dtype` (half the size); configs say so."""
    weights = load_file(folder / "sae_weights.safetensors")
    with atomic_path(folder / "sae_weights.safetensors") as tmp:
        save_file({k: v.to(getattr(torch, dtype)).contiguous() for k, v in weights.items()}, tmp)
    cfg_path = folder / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["dtype"] = dtype
    write_json_atomic(cfg_path, cfg)


def train_saes(model: "Model", corpus: list[str], out_dir: str | Path, cfg: TrainConfig) -> dict[str, dict]:
    """Train one SAE per layer; returns held-out quality by SAE folder name,
    also written to out_dir/quality.json with the training settings."""
    out = Path(out_dir)
    train, held_out = split_texts(corpus, cfg.held_out_fraction, cfg.seed)
    hooks = [block_hook(layer, cfg.hook_kind) for layer in cfg.layers]
    cached = cache_activations(model, train, hooks, cfg.max_length, out / "activations")
    report = {}
    for layer, hook in zip(cfg.layers, hooks):
        folder = train_one(cached[hook], hook, cfg, model.name, out / f"{cfg.hook_kind.replace('hook_', '')}-{layer}")
        quality = sae_quality(model, load_sae(folder), held_out[:cfg.max_eval_texts], max_length=cfg.max_length)
        report[folder.name] = quality
    summary = {"settings": asdict(cfg), "n_train_texts": len(train), "n_held_out_texts": len(held_out),
               "n_train_tokens": int(next(iter(cached.values())).shape[0]), "quality": report}
    write_json_atomic(out / "quality.json", summary)
    return report
