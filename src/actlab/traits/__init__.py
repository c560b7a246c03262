"""Trait (steering) vectors from contrastive generation: generation with
activation capture, judges, vectors per layer, steering and monitoring.

Importing the package registers its judge kinds (keyword, regex, local,
openai) and the trait run kind."""

from . import api_judge, local_judge  # noqa: F401  (each registers its judge kind)
from .definitions import Trait, load_trait
from .generation import GenerationConfig, Generations, Steering, generate, render_prompt
from .runs import TraitRun, run_trait

__all__ = ["GenerationConfig", "Generations", "Steering", "Trait", "TraitRun", "generate", "load_trait",
           "render_prompt", "run_trait"]
