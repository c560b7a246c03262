"""The batched extraction engine.

Texts are sorted by length and grouped under a token budget; each batch gets one
forward pass through the base model (no LM head) that stops by exception right
after the last requested hook fires. Hooks pool on the device as they fire, so
only pooled rows ever leave the model, and they are copied to preallocated host
tensors without stalling the next batch.

`Extractor` is a plain callable over lists of texts, so a distributed runner
can call it unchanged. Its extension points are typed: a hook feeds `Sink`s
(subclass and override `consume`, and what else it needs), an extractor
subclass chooses its sinks and its result type (`Extractor[Features]`), and
the model is any `EngineModel` (actlab.models.Model is one).
"""

from .batches import (
                      CPU_TOKEN_BUDGET,
                      CUDA_MAX_TOKEN_BUDGET,
                      MPS_TOKEN_BUDGET,
                      Batch,
                      EngineModel,
                      OnBatch,
                      Progress,
                      StopForward,
                      auto_token_budget,
                      padded_batch,
                      plan_batches,
)
from .config import ExtractConfig
from .extractor import Extractor, Pass
from .sinks import ActivationSink, HostCopies, Sink

__all__ = ["ActivationSink", "Batch", "CPU_TOKEN_BUDGET", "CUDA_MAX_TOKEN_BUDGET", "EngineModel", "ExtractConfig",
           "Extractor", "HostCopies", "MPS_TOKEN_BUDGET", "OnBatch", "Pass", "Progress", "Sink", "StopForward",
           "auto_token_budget", "padded_batch", "plan_batches"]
