"""Non-learned template baseline: element substitution into training structures (pymatgen ``replace_species``).

CSP: for a target composition, every training structure with the same anonymized reduced formula (e.g. ``ABC3``) is
a template; target elements are assigned to template sites by equal amounts, then by electronegativity rank, and the
cell is rescaled by the ratio of summed atomic volumes (``Element.atomic_radius``^3). Templates are ranked by how
close their elements are to the target's (sum of |delta electronegativity|), so the first sample is the most similar.

De novo: a random training structure with each element replaced by a random element of the same periodic-table group
(seeded), volume rescaled the same way: the "ion exchange" baseline of generative-model papers.
"""

from __future__ import annotations

import random
from collections import defaultdict

from pymatgen.core import Composition, Element

from cifllm.cif import CIFError, format_formula, structure_to_text, text_to_structure

__all__ = ["TemplateBaseline"]


def _x(el: Element) -> float:
    x = el.X
    return x if x == x else 2.0


def _r3(el: Element) -> float:
    r = el.atomic_radius or 1.5
    return float(r) ** 3


def _ordered(comp: Composition) -> list[tuple[Element, float]]:
    return sorted(comp.reduced_composition.element_composition.items(), key=lambda kv: (kv[1], _x(kv[0]), kv[0].symbol))


class TemplateBaseline:
    """Templates from training texts (canonical CIF)."""

    def __init__(self, train_texts: list[str], seed: int = 0) -> None:
        self.templates: dict[str, list] = defaultdict(list)
        self.structures = []
        for t in train_texts:
            try:
                s = text_to_structure(t)
            except CIFError:
                continue
            if not s.is_ordered:
                continue
            self.templates[s.composition.anonymized_formula].append(s)
            self.structures.append(s)
        self.rng = random.Random(seed)

    @staticmethod
    def _substitute(template, mapping: dict[Element, Element]):
        s = template.copy()
        old = sum(_r3(sp) * n for sp, n in s.composition.element_composition.items())
        s.replace_species({k: v for k, v in mapping.items()})
        new = sum(_r3(sp) * n for sp, n in s.composition.element_composition.items())
        s.scale_lattice(s.volume * new / old)
        return s

    def csp(self, composition: Composition | str, k: int = 1) -> list[str]:
        """Up to ``k`` canonical texts for ``composition`` (fewer when fewer templates exist)."""
        comp = Composition(composition)
        target = _ordered(comp)
        scored = []
        for tmpl in self.templates.get(comp.anonymized_formula, []):
            src = _ordered(tmpl.composition)
            if [round(a, 6) for _, a in src] != [round(a, 6) for _, a in target]:
                continue
            mapping = {e_src: e_tgt for (e_src, _), (e_tgt, _) in zip(src, target)}
            dist = sum(abs(_x(a) - _x(b)) for a, b in mapping.items())
            scored.append((dist, format_formula(tmpl.composition), tmpl, mapping))
        scored.sort(key=lambda t: (t[0], t[1]))
        out = []
        for _, _, tmpl, mapping in scored[:k]:
            try:
                out.append(structure_to_text(self._substitute(tmpl, mapping)))
            except CIFError:
                continue
        return out

    def denovo(self, n: int) -> list[str]:
        """``n`` canonical texts by same-group substitution into random training structures."""
        by_group: dict[int, list[Element]] = defaultdict(list)
        for z in range(1, 84):  # stable elements only (no Tc, Pm, and nothing past Bi)
            if z in (43, 61):
                continue
            el = Element.from_Z(z)
            by_group[el.group].append(el)
        out: list[str] = []
        tries = 0
        while len(out) < n and self.structures and tries < 20 * n:
            tries += 1
            tmpl = self.rng.choice(self.structures)
            mapping = {el: self.rng.choice(by_group[el.group]) for el in tmpl.composition.elements}
            if len(set(mapping.values())) < len(mapping):
                continue
            try:
                out.append(structure_to_text(self._substitute(tmpl, mapping)))
            except CIFError:
                continue
        return out
