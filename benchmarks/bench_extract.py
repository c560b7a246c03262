"""Run the extraction benchmark: python benchmarks/bench_extract.py [--n-texts 256 ...]

Same as `actlab bench extract`; writes benchmarks/results/extract-<device>.json
and the table in docs/benchmarks.md."""

import sys
from pathlib import Path

from actlab.cli import main

if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    sys.argv = ["actlab", "bench", "extract", "--results-dir", str(root / "benchmarks" / "results"),
                "--readme", str(root / "docs" / "benchmarks.md"), *sys.argv[1:]]
    main()
