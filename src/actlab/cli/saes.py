"""`actlab sae ...`: SAE quality and training."""

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from ..inputs import FieldNames, read_records
from ..training import TrainConfig
from .common import ModelOptions, SAEOptions, print_table, with_options

app = typer.Typer(no_args_is_help=True, help="Sparse autoencoders.")


@dataclasses.dataclass
class QualityOptions:
    input: Path = dataclasses.field(metadata={"short": "-i", "help": ".txt, .jsonl, .json, .csv or .parquet"})
    max_length: Optional[int] = dataclasses.field(default=None, metadata={
        "help": "Truncate texts to this many tokens."})


@app.command("quality")
@with_options(model=ModelOptions, saes=SAEOptions, fields=FieldNames, texts=QualityOptions,
              exclude=("fields.id", "fields.label", "fields.category"))
def quality(model: ModelOptions, saes: SAEOptions, fields: FieldNames, texts: QualityOptions) -> None:
    """L0, dead / dense latents, MSE, explained variance and next-token loss with the reconstruction spliced in."""
    from ..saes import default_saes
    from ..saes.quality import sae_quality

    records = read_records(texts.input, fields)
    lm = model.load()
    chosen = saes.load(lm.device) or default_saes(lm.name, lm.device)
    rows = []
    for name, loaded in chosen.items():
        q = sae_quality(lm, loaded, records.texts, max_length=texts.max_length)
        rows.append([name, f"{q['l0']:.1f}", f"{q['dead_fraction']:.1%}", f"{q['dense_fraction']:.1%}",
                     f"{q['mse']:.4g}", f"{q['explained_variance']:.3f}", f"{q['ce_clean']:.3f}",
                     f"{q['ce_spliced']:.3f}", f"{q['ce_loss_score']:.3f}"])
    print_table(f"SAE quality on {len(records)} texts", ["sae", "L0", "dead", "dense", "MSE", "expl. var.",
                                                          "CE clean", "CE spliced", "CE score"], rows)


@dataclasses.dataclass
class TrainOptions:
    corpus: list[Path] = dataclasses.field(metadata={
        "help": "Plain-text file(s): paragraphs or %-separated fortunes; repeatable."})
    out: Path = dataclasses.field(metadata={"short": "-o", "help": "Folder for one SAELens SAE folder per layer."})


@app.command("train")
@with_options(model=ModelOptions, files=TrainOptions, cfg=TrainConfig)
def train(model: ModelOptions, files: TrainOptions, cfg: TrainConfig) -> None:
    """Train TopK SAEs with SAELens's trainer on activations the engine caches; report held-out quality."""
    from ..training import read_corpus, train_saes

    report = train_saes(model.load(), read_corpus(files.corpus), files.out, cfg)
    print_table(f"held-out quality ({files.out})", ["sae", "L0", "dead", "expl. var.", "CE clean", "CE spliced"],
                [[name, f"{q['l0']:.1f}", f"{q['dead_fraction']:.1%}", f"{q['explained_variance']:.3f}",
                  f"{q['ce_clean']:.3f}", f"{q['ce_spliced']:.3f}"] for name, q in report.items()])
