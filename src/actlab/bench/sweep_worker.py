"""One batch-size sweep point in a fresh process, so that its memory belongs to
that configuration alone. The peak is the largest resident set sampled during
the extraction (model included); the process high-water mark would report the
model's loading instead. Prints one JSON line: seconds and peak RSS in bytes.

python -m actlab.bench.sweep_worker MODEL DEVICE N_TEXTS BATCH_SIZE|auto HOOK [HOOK ...]
"""

import json
import sys
import threading
import time

import psutil

from ..datasets import length_mix
from ..models import load_model


def main() -> None:
    model_name, device, n_texts, batch, *hooks = sys.argv[1:]
    model = load_model(model_name, device=device)
    texts = length_mix(model.tokenizer, int(n_texts))
    batch_size = None if batch == "auto" else int(batch)
    model.extract(texts[:4], hooks, batch_size=batch_size, progress=False)  # warm-up
    process, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    model.extract(texts, hooks, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    print(json.dumps({"seconds": seconds, "peak_memory_bytes": peak[0]}))


if __name__ == "__main__":
    main()
