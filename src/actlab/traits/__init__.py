"""Trait (steering) vectors from contrastive generation: generation with
activation capture, judges, vectors per layer, steering and monitoring.

Importing the package registers its judge kinds (keyword, regex, local,
openai) and the trait run kind."""

from . import local_judge  # noqa: F401  (registers the local judge kind)
from . import api_judge  # noqa: F401  (registers the openai judge kind, after local)
from .definitions import Trait, load_trait
from .generation import GenerationConfig, Generations, Steering, generate, render_prompt
from .runs import TraitRun, run_trait

__all__ = ["GenerationConfig", "Generations", "Steering", "Trait", "TraitRun", "generate", "load_trait",
           "render_prompt", "run_trait"]
