"""Trait (steering) vectors from contrastive generation: generation with
activation capture, judges, vectors per layer, steering and monitoring.

A trait run's stages, each a module: `runs` (the run and its generation),
`judging`, `fitting` (vectors, layer choice), `steering`, `monitor`;
actlab.run_trait (actlab.pipelines) runs them all. Importing the package
registers the trait run kind; its judges are actlab.judges."""

from ..generation import GenerationConfig, Generations, Steering, generate, render_prompt
from .definitions import Trait, load_trait
from .fitting import best_layer, steering_layer, vectors_run
from .judges import JudgeConfig
from .judging import judge_run
from .monitor import MonitorConfig, MonitoredText, monitor_run, monitored_text
from .run import TRAIT_SAMPLING, TraitRun, generate_trait_run
from .steering import SteerConfig, steer_sweep, sweep_summary
from .vectors import VectorsConfig

__all__ = ["GenerationConfig", "Generations", "JudgeConfig", "MonitoredText", "SteerConfig", "Steering",
           "TRAIT_SAMPLING", "Trait", "TraitRun", "VectorsConfig", "best_layer", "generate", "generate_trait_run",
           "judge_run", "load_trait", "MonitorConfig", "monitor_run", "monitored_text", "render_prompt", "steer_sweep",
           "steering_layer", "sweep_summary", "vectors_run"]
