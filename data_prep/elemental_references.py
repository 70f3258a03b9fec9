"""Compute a potential's elemental reference energies and write them into the shipped
``cifllm/resources/potentials/elemental_references.json`` (see :mod:`cifllm.potentials.references`).

Structures: the lowest-E_hull single-element row of the DFT data (MP-20, MPTS-52, MP-40 time split under
``$CIFLLM_DATA_DIR``) per element, else ASE's reference state; each relaxed with the potential (FIRE, fmax 0.05 eV/A,
<= 1000 steps, cell and positions).

    CIFLLM_DATA_DIR=../shared/data nice -n 19 python data_prep/elemental_references.py --potential chgnet
    CIFLLM_DATA_DIR=../shared/data nice -n 19 python data_prep/elemental_references.py --potential sevennet
"""

from __future__ import annotations

import argparse
import time
import warnings

from cifllm.potentials import get_potential
from cifllm.potentials.dft import dft_rows
from cifllm.potentials.references import (
    REFERENCES_FILE,
    compute_elemental_references,
    elemental_candidates,
    write_elemental_references,
)
from cifllm.potentials.relax import RelaxSettings

ABOUT = (
    "Elemental reference energies mu_i (eV/atom) per potential weights, for formation energies "
    "E_f = E - sum_i x_i mu_i on the DFT-anchored hull (cifllm.potentials.hull). Written by "
    "data_prep/elemental_references.py; per element: the structure (source), its DFT E_hull (subtracted), the relaxation."
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--potential", default="chgnet")
    ap.add_argument("--model", default=None)
    ap.add_argument("--data-dir", default=None, help="shared data folder (default $CIFLLM_DATA_DIR)")
    ap.add_argument("--fmax", type=float, default=0.05)
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--elements", nargs="*", default=None, help="recompute only these, keeping the stored others")
    ap.add_argument("--out", default=str(REFERENCES_FILE))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    pot = get_potential(args.potential, args.model)
    t0 = time.perf_counter()
    cands = elemental_candidates(dft_rows(args.data_dir))
    print(f"{len(cands)} elements with a DFT structure ({time.perf_counter() - t0:.1f} s); potential {pot.key}")
    settings = RelaxSettings(fmax=args.fmax, max_steps=args.max_steps, max_atoms=400)

    def show(el: str, rec: dict) -> None:
        print(f"  {el:2s} {rec.get('energy_per_atom')!s:>11} {rec.get('source')} steps={rec.get('steps')} {rec.get('reason') or ''}", flush=True)

    refs = compute_elemental_references(pot, cands, settings, elements=args.elements, progress=show)
    refs.meta["script"] = "data_prep/elemental_references.py"
    refs.meta["data"] = "DFT rows of mp_20, mpts_52, mp40_time_split (cifllm.potentials.dft.dft_rows)"
    refs.meta["seconds"] = round(time.perf_counter() - t0, 1)
    write_elemental_references(refs, args.out, about=ABOUT, merge=bool(args.elements))
    missing = sorted(set(refs.elements) - set(refs.energies))
    print(f"{len(refs.energies)} references written to {args.out}; none for {missing}")


if __name__ == "__main__":
    main()
