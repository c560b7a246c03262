"""actlab: fast, correct activation extraction for interpretability experiments.

    model = actlab.load_model()                        # the default model
    acts = model.extract(texts, ["blocks.7.hook_resid_post"], pooling="mean")
    feats = model.features(texts)                      # the default SAEs, one pass
    path = actlab.extract_run(model, records, "runs/x", actlab.ExtractConfig(hooks=[...]))
    run = actlab.open_run(path)                        # ActivationRun, FeatureRun, TraitRun, LatentsRun, ...
    gens = actlab.generate(model, [actlab.render_prompt(model.tokenizer, "Hi")], layers=[7])
"""

from .activations import ActivationRun, extract_run
from .circuits import CircuitConfig, CircuitRun, circuit_run
from .contrasts.config import ContrastConfig
from .contrasts.pairs import load_pairs
from .contrasts.run import ContrastRun
from .default_model import DEFAULT_MODEL
from .engine import ExtractConfig
from .errors import ActlabError
from .features import FeatureRun, features_run
from .generation import (
                         GenerationConfig,
                         GenerationRun,
                         GenerationRunConfig,
                         Generations,
                         Steering,
                         generate,
                         generate_run,
                         render_prompt,
)
from .inputs import Records, read_records
from .interventions import Ablate, Add, Cap, EditLatents, Intervention, ProjectOut, Set
from .latents import ExplainConfig, LatentsConfig, LatentsRun, latents_run
from .models import Model, ModelSpec, load_model
from .patching import PatchConfig, PatchRun, patch_run
from .pipelines import TraitPipelineConfig, build_report, contrast, explain_run, run_trait
from .results import Activations, ExtractStats
from .runs import RunControl, open_run
from .saes import SAE, load_sae
from .saes.features import Features
from .traits import TraitRun, load_trait
from .version import VERSION as __version__

__all__ = ["Ablate", "ActivationRun", "Activations", "ActlabError", "Add", "Cap", "CircuitConfig", "CircuitRun",
           "ContrastConfig", "ContrastRun",
           "DEFAULT_MODEL", "EditLatents", "ExplainConfig", "ExtractConfig", "ExtractStats", "FeatureRun", "Features",
           "GenerationConfig", "GenerationRun", "GenerationRunConfig", "Generations", "Intervention", "LatentsConfig",
           "LatentsRun", "Model", "ModelSpec", "PatchConfig", "PatchRun", "ProjectOut", "Records", "RunControl", "SAE",
           "Set", "Steering", "TraitPipelineConfig", "TraitRun", "__version__", "build_report", "circuit_run",
           "contrast", "explain_run", "extract_run", "features_run", "generate", "generate_run", "latents_run",
           "load_model", "load_pairs", "load_sae", "load_trait", "open_run", "patch_run", "read_records",
           "render_prompt", "run_trait"]
