"""The generation engine: continuous batching over a static slot cache, with
capture and steering per row and sampling that batching cannot change.

    gens = actlab.generate(model, [actlab.render_prompt(tok, "Hi")], layers=[7],
                           cfg=actlab.GenerationConfig(max_new_tokens=64))
    gens.answers, gens.pooled["response_mean"][7]   # (n, d_model)
    path = actlab.generate_run(model, records, "runs/g", actlab.GenerationRunConfig(layers=[7]))
    actlab.open_run(path).answers()                  # a GenerationRun, resumable like every run

The Hugging Face modules run unchanged; the cache (`SlotCache`, a
transformers `Cache`) and the attention reading it (a registered attention
function) are supplied through transformers' extension points.
"""

from .api import Generations, RunSlice, generate, prompt_token_ids, render_prompt
from .cache import SlotCache
from .config import GenerationConfig, Steering
from .engine import cache_keyword, eos_ids
from .files import EditConfig, FileCap, FileVector, LatentClamp
from .run import GENERATION_SHARD_SIZE, GenerationRun, GenerationRunConfig, generate_run
from .taps import parse_generation_pooling

__all__ = ["EditConfig", "FileCap", "FileVector", "GENERATION_SHARD_SIZE", "GenerationConfig", "GenerationRun",
           "GenerationRunConfig", "Generations", "LatentClamp", "RunSlice", "SlotCache", "Steering", "cache_keyword",
           "eos_ids", "generate", "generate_run", "parse_generation_pooling", "prompt_token_ids", "render_prompt"]
