"""Re-serialize a corpus in another text format, row for row (:func:`cifllm.data.reformat.reformat_corpus`).

    .venv/bin/python benchmarks/reformat_corpus.py data/corpus-q800 data/corpus-q800-v1 --text-format cif-v1 --workers 2

Used for the v1-vs-v2 pair of quick models in the constraint-engine benchmark (same structures, same splits).
"""

from __future__ import annotations

import argparse
import json

from cifllm.cif.canonical import TEXT_FORMATS
from cifllm.data.reformat import reformat_corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="corpus folder to read")
    ap.add_argument("out", help="new corpus folder")
    ap.add_argument("--text-format", default="cif-v1", choices=TEXT_FORMATS)
    ap.add_argument("--workers", type=int, default=0, help="processes (0 = this one)")
    a = ap.parse_args()
    r = reformat_corpus(a.src, a.out, a.text_format, workers=a.workers)
    print(json.dumps({"out": str(r.out), "n_in": r.n_in, "n_out": r.n_out, "dropped": r.dropped}))


if __name__ == "__main__":
    main()
