"""`actlab sae ...`: SAE quality and training."""

from pathlib import Path
from typing import List, Optional

import typer

from ..inputs import read_records
from .common import ModelOptions, comma_list, print_table, with_options

app = typer.Typer(no_args_is_help=True, help="Sparse autoencoders.")


@app.command("quality")
@with_options(model=ModelOptions)
def quality(model: ModelOptions,
            input: Path = typer.Option(..., "--input", "-i", help=".txt, .jsonl, .json, .csv or .parquet"),
            sae: Optional[List[str]] = typer.Option(None, "--sae", help="SAE folder or release/sae_id; repeatable. "
                                                    "Default: the SAEs actlab ships for the default model."),
            text_field: str = typer.Option("text", help="Text field (jsonl, json, csv, parquet)."),
            max_length: Optional[int] = typer.Option(None, help="Truncate texts to this many tokens.")) -> None:
    """L0, dead / dense latents, MSE, explained variance and next-token loss with the reconstruction spliced in."""
    from ..inputs import FieldNames
    from ..saes import default_saes, load_sae
    from ..saes.quality import sae_quality

    records = read_records(input, FieldNames(text_field))
    lm = model.load()
    saes = {name: load_sae(name, device=lm.device) for name in sae} if sae else default_saes(lm.name, lm.device)
    rows = []
    for name, loaded in saes.items():
        q = sae_quality(lm, loaded, records.texts, max_length=max_length)
        rows.append([name, f"{q['l0']:.1f}", f"{q['dead_fraction']:.1%}", f"{q['dense_fraction']:.1%}",
                     f"{q['mse']:.4g}", f"{q['explained_variance']:.3f}", f"{q['ce_clean']:.3f}",
                     f"{q['ce_spliced']:.3f}", f"{q['ce_loss_score']:.3f}"])
    print_table(f"SAE quality on {len(records)} texts", ["sae", "L0", "dead", "dense", "MSE", "expl. var.",
                                                          "CE clean", "CE spliced", "CE score"], rows)


@app.command("train")
@with_options(model=ModelOptions)
def train(model: ModelOptions,
          corpus: List[Path] = typer.Option(..., "--corpus", help="Plain-text file(s): paragraphs or %-separated "
                                            "fortunes."),
          out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for one SAELens SAE folder per layer."),
          layers: str = typer.Option(..., help="Comma-separated block indices, e.g. 7,15,22."),
          d_sae: int = typer.Option(2048, help="Latents per SAE."),
          k: int = typer.Option(32, help="Active latents per token (TopK)."),
          steps: int = typer.Option(600, help="Training steps."),
          batch_size: int = typer.Option(4096, help="Activations per step."),
          max_length: int = typer.Option(128, help="Tokens per text."),
          seed: int = typer.Option(0)) -> None:
    """Train TopK SAEs with SAELens's trainer on activations the engine caches; report held-out quality."""
    from ..training import TrainConfig, read_corpus, train_saes

    cfg = TrainConfig(layers=comma_list(layers), d_sae=d_sae, k=k, steps=steps, batch_size=batch_size,
                      max_length=max_length, seed=seed)
    report = train_saes(model.load(), read_corpus(corpus), out_dir, cfg)
    print_table(f"held-out quality ({out_dir})", ["sae", "L0", "dead", "expl. var.", "CE clean", "CE spliced"],
                [[name, f"{q['l0']:.1f}", f"{q['dead_fraction']:.1%}", f"{q['explained_variance']:.3f}",
                  f"{q['ce_clean']:.3f}", f"{q['ce_spliced']:.3f}"] for name, q in report.items()])
