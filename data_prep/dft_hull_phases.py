"""Write the default DFT hull table (to ``$CIFLLM_HULL`` or the user cache, where the library looks; it also builds it on
first use): the phases of MP-20 and MPTS-52 that lie on the hull of their own chemical system (:mod:`cifllm.potentials.hull_table`).

    python data_prep/dft_hull_phases.py [--data-dir ../shared/data] [--out PATH]
"""

from __future__ import annotations

import argparse
import time

from cifllm.potentials.dft import dft_rows
from cifllm.potentials.hull_table import default_hull_file, hull_phases, write_hull_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="the shared data folder (default: $CIFLLM_DATA_DIR)")
    ap.add_argument("--out", default=None, help="the gzipped CSV to write (default: $CIFLLM_HULL or the user cache, where the library looks)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    rows = [r for r in dft_rows(a.data_dir) if r.formation_energy_per_atom is not None]
    keep = hull_phases(rows)
    out = a.out or str(default_hull_file())
    n = write_hull_table(keep, out)
    print(f"{out}: {n} hull phases of {len(rows)} DFT rows with a formation energy ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
