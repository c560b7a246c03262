"""Trait (steering) vectors from contrastive generation: generation with
activation capture, judges, vectors per layer, steering and monitoring."""

from .generation import GenerationConfig, Generations, Steering, generate, render_prompt

__all__ = ["GenerationConfig", "Generations", "Steering", "generate", "render_prompt"]
