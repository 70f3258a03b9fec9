"""Write the DFT hull that ships in the package (``cifllm/resources/potentials/dft_hull_phases.csv.gz``): the phases
of MP-20 and MPTS-52 that lie on the hull of their own chemical system (:mod:`cifllm.potentials.packaged_hull`).

    python data_prep/dft_hull_phases.py [--data-dir ../shared/data] [--out cifllm/resources/potentials/dft_hull_phases.csv.gz]
"""

from __future__ import annotations

import argparse
import time

from cifllm.potentials.dft import dft_rows
from cifllm.potentials.packaged_hull import PACKAGED_HULL_FILE, hull_phases, write_hull_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="the shared data folder (default: $CIFLLM_DATA_DIR)")
    ap.add_argument("--out", default=str(PACKAGED_HULL_FILE), help="the gzipped CSV to write")
    a = ap.parse_args()
    t0 = time.perf_counter()
    rows = [r for r in dft_rows(a.data_dir) if r.formation_energy_per_atom is not None]
    keep = hull_phases(rows)
    n = write_hull_table(keep, a.out)
    print(f"{a.out}: {n} hull phases of {len(rows)} DFT rows with a formation energy ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
