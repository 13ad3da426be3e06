"""Child process that runs fastText training, started by :mod:`prompt.safety.train` as ``python -P _fit.py``.

Why a separate process: fastText initialises only the first tenth of its input matrix when trained
with one thread (``DenseMatrix::uniform`` splits the matrix in ten blocks, one per thread) and leaves
the rest as whatever ``malloc`` returned. In a long-lived process that memory holds stale data, so
training becomes irreproducible and often diverges ("Encountered NaN"). A fresh process whose large
allocations always come from ``mmap`` (zero-filled pages; the parent pins ``MALLOC_MMAP_THRESHOLD_``)
sees zeros there instead: same data and options, same model, every time.

Reads ``{"input": path, "output": path, "args": {...}}`` as JSON on stdin; exit status 0 on success,
else 1 with the error on stderr.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    job = json.load(sys.stdin)
    try:
        import fasttext  # type: ignore[import-untyped]  # optional extra: prompt safety

        model = fasttext.train_supervised(input=job["input"], **job["args"])
        model.save_model(job["output"])
    except (ImportError, RuntimeError, ValueError, OSError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
