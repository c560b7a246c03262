"""One batch-size sweep point in a fresh process, so that its peak resident
memory belongs to that configuration alone (a CPU process never gives its
high-water mark back). Prints one JSON line: seconds and peak RSS in bytes.

python -m actlab.bench.sweep_worker MODEL DEVICE N_TEXTS BATCH_SIZE|auto HOOK [HOOK ...]
"""

import json
import resource
import sys
import time

from ..datasets import length_mix
from ..models import load_model


def main() -> None:
    model_name, device, n_texts, batch, *hooks = sys.argv[1:]
    model = load_model(model_name, device=device)
    texts = length_mix(model.tokenizer, int(n_texts))
    batch_size = None if batch == "auto" else int(batch)
    model.extract(texts[:4], hooks, batch_size=batch_size, progress=False)  # warm-up
    start = time.perf_counter()
    model.extract(texts, hooks, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak_memory_bytes": peak}))


if __name__ == "__main__":
    main()
