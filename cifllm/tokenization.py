"""The CIF tokenizer: a fixed, versioned word-level vocabulary built with Hugging Face ``tokenizers``.

Pieces (longest match first, so decoding is plain concatenation and ``decode(encode(t)) == t`` for ASCII text):

* special tokens ``<|pad|> <|bos|> <|eos|> <|unk|>`` (ids 0-3);
* CIF tags of canonical text (``data_``, ``loop_``, ``_cell_length_a``, ...);
* reserved property-conditioning tags (``_property_<name>`` and ``_property_reserved_<k>``), not used by the base
  corpus, so property conditioning needs no new vocabulary;
* the 230 space-group symbols, matched only right after ``_symmetry_space_group_name_H-M `` (so ``Pm`` the element
  and ``Pm`` the space group are different tokens);
* the element symbols (H .. Og);
* every printable ASCII character, newline and tab (digits are therefore single tokens).

Anything else (non-ASCII) maps to ``<|unk|>``; the corpus builder rejects such text.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from cifllm.cif.canonical import HEADER_TAGS, LOOP_TAGS_V1, SPACE_GROUP_SYMBOLS
from cifllm.core.inputs import InputError, load_json
from cifllm.utils import atomic_write_json

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "UNK",
    "TOKENIZER_VERSION",
    "PROPERTY_TAGS",
    "build_tokenizer",
    "load_tokenizer",
    "save_tokenizer",
    "tokenizer_fingerprint",
    "check_round_trip",
]

#: The tokenizer's version is the text format it was made for. cif-v2 keeps every token id of cif-v1 (the
#: ``_atom_site_Wyckoff_symbol`` tag and the letters were already in the vocabulary), so the fingerprint is the same.
TOKENIZER_VERSION = "cif-v2"
PAD, BOS, EOS, UNK = "<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
SG_CONTEXT = "_symmetry_space_group_name_H-M "

#: Named property tags reserved for conditioning (value units in the name). Never used by the base corpus.
PROPERTY_TAGS: tuple[str, ...] = (
    "_property_band_gap_eV",
    "_property_tc_K",
    "_property_thermal_conductivity_W_mK",
    "_property_bulk_modulus_GPa",
    "_property_shear_modulus_GPa",
    "_property_debye_temperature_K",
    "_property_thermal_expansion_1_K",
    "_property_formation_energy_eV_atom",
    "_property_energy_above_hull_eV_atom",
    "_property_density_g_cm3",
    "_property_n_atoms",
    "_property_year",
) + tuple(f"_property_reserved_{k}" for k in range(32))

EXTRA_CIF_TAGS = ("data_", "loop_", "_atom_site_Wyckoff_symbol", "_chemical_formula_sum")

ELEMENTS: tuple[str, ...] = tuple(
    (
        "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr Nb "
        "Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au "
        "Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
    ).split()  # noqa: SIM905
)

ASCII_CHARS: tuple[str, ...] = ("\n", "\t") + tuple(chr(c) for c in range(32, 127))


def _vocab() -> tuple[list[str], list[str], list[str]]:
    """(word tokens in id order, tag tokens, space-group tokens)."""
    tags = list(dict.fromkeys((*EXTRA_CIF_TAGS, *HEADER_TAGS, *LOOP_TAGS_V1, *PROPERTY_TAGS)))
    sgs = list(SPACE_GROUP_SYMBOLS)
    words: list[str] = list(SPECIAL_TOKENS)
    seen = set(words)
    for t in (*tags, *sgs, *ELEMENTS, *ASCII_CHARS):
        if t not in seen:
            words.append(t)
            seen.add(t)
    return words, tags, sgs


def _split_pattern(tags: list[str], sgs: list[str]) -> str:
    def alt(items: Iterable[str]) -> str:
        return "|".join(re.escape(x) for x in sorted(set(items), key=lambda s: (-len(s), s)))

    multi_el = [e for e in ELEMENTS if len(e) > 1]
    return f"{alt(tags)}|(?<={re.escape('H-M ')})(?:{alt(sgs)})|{alt(multi_el)}|[\\s\\S]"


def build_tokenizer() -> Tokenizer:
    """Build the (deterministic) CIF tokenizer. Same code -> same vocabulary -> same fingerprint."""
    words, tags, sgs = _vocab()
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_split_pattern(tags, sgs)), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return tok


def tokenizer_fingerprint(tok: Tokenizer | None = None) -> str:
    """Short SHA-256 of the vocabulary (token -> id); stored in corpus manifests and model folders."""
    tok = tok or build_tokenizer()
    vocab = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def as_pretrained(tok: Tokenizer | None = None, model_max_length: int = 4096):
    """Wrap as ``transformers.PreTrainedTokenizerFast`` with explicit BOS/EOS/PAD/UNK (left padding for generation)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok or build_tokenizer(),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(out_dir: str | Path, model_max_length: int = 4096) -> Path:
    """Save ``tokenizer.json`` + ``tokenizer_config.json`` + ``special_tokens_map.json`` + ``cifllm_tokenizer.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    as_pretrained(tok, model_max_length).save_pretrained(str(out))
    atomic_write_json(
        out / "cifllm_tokenizer.json",
        {"version": TOKENIZER_VERSION, "fingerprint": tokenizer_fingerprint(tok), "vocab_size": tok.get_vocab_size()},
    )
    return out


def load_tokenizer(path: str | Path):
    """Load a saved tokenizer with ``AutoTokenizer`` (offline) and check it is a cifllm tokenizer of this version."""
    from transformers import AutoTokenizer

    p = Path(path)
    meta_file = p / "cifllm_tokenizer.json"
    if not (p / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{p}: no tokenizer.json (build one with `cifllm tokenizer`)")
    tok = AutoTokenizer.from_pretrained(str(p))
    if meta_file.is_file():
        meta = load_json(meta_file, "tokenizer record")
        if not isinstance(meta, dict):
            raise InputError(f"tokenizer record {meta_file}: expected a JSON object")
        if meta.get("fingerprint") != tokenizer_fingerprint(tok.backend_tokenizer):
            raise ValueError(f"{p}: tokenizer vocabulary does not match its recorded fingerprint {meta.get('fingerprint')}")
    return tok


@dataclass(frozen=True)
class RoundTripReport:
    n: int
    n_exact: int
    n_unk: int
    failures: tuple[tuple[int, str], ...]
    lengths: tuple[int, ...]

    @property
    def exact_fraction(self) -> float:
        return self.n_exact / self.n if self.n else 1.0


def check_round_trip(texts: Iterable[str], tok: Tokenizer | None = None, batch_size: int = 1024, max_failures: int = 20) -> RoundTripReport:
    """Encode and decode every text; count exact round trips, texts containing ``<|unk|>``, and token lengths
    (without BOS/EOS)."""
    tok = tok or build_tokenizer()
    unk_id = tok.token_to_id(UNK)
    n = n_exact = n_unk = 0
    failures: list[tuple[int, str]] = []
    lengths: list[int] = []
    batch: list[str] = []

    def flush() -> None:
        nonlocal n, n_exact, n_unk
        encs = tok.encode_batch(batch, add_special_tokens=False)
        decs = tok.decode_batch([e.ids for e in encs], skip_special_tokens=False)
        for t, e, d in zip(batch, encs, decs):
            lengths.append(len(e.ids))
            if unk_id in e.ids:
                n_unk += 1
            if d == t:
                n_exact += 1
            elif len(failures) < max_failures:
                failures.append((n, t[:200]))
            n += 1
        batch.clear()

    for t in texts:
        batch.append(t)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return RoundTripReport(n, n_exact, n_unk, tuple(failures), tuple(lengths))
