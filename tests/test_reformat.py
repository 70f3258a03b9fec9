"""Re-serializing a corpus in another text format keeps every row's structure, split and metadata."""

from __future__ import annotations

import json

import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher

from cifllm.cif.canonical import text_format_of, text_to_structure
from cifllm.data.corpus import load_corpus, load_manifest
from cifllm.data.reformat import REFORMAT_REPORT, reformat_corpus
from cifllm.data.registry import DataError
from cifllm.tokenization import build_tokenizer


def test_v2_corpus_to_v1_row_for_row(tiny_corpus, tmp_path):
    out = tmp_path / "v1"
    res = reformat_corpus(tiny_corpus, out, "cif-v1")
    src = load_corpus(tiny_corpus).to_list()
    dst = load_corpus(out).to_list()
    assert res.n_in == len(src) and res.n_out == len(dst) == len(src) and res.dropped == {}
    man = load_manifest(out)
    assert man["text_format"] == man["tokenizer_version"] == "cif-v1"
    assert man["n_rows"] == len(dst) and man["reformatted_from"] == str(tiny_corpus)
    assert json.loads((out / REFORMAT_REPORT).read_text())["n_out"] == len(dst)
    tok = build_tokenizer()
    sm = StructureMatcher()
    for a, b in zip(src, dst):
        assert text_format_of(a["text"]) == "cif-v2" and text_format_of(b["text"]) == "cif-v1"
        assert (a["split"], a["reduced_formula"], a["sources"], a["properties"]) == (b["split"], b["reduced_formula"], b["sources"], b["properties"])
        assert b["id"] != a["id"] and b["n_tokens"] < a["n_tokens"]  # no Wyckoff column
        assert b["n_tokens"] == len(tok.encode(b["text"], add_special_tokens=False).ids)  # as training checks it
        assert sm.fit(text_to_structure(a["text"]), text_to_structure(b["text"]))


def test_bad_format_and_same_folder(tiny_corpus):
    with pytest.raises(DataError, match="text_format"):
        reformat_corpus(tiny_corpus, tiny_corpus.parent / "x", "cif-v9")
    with pytest.raises(DataError, match="new folder"):
        reformat_corpus(tiny_corpus, tiny_corpus, "cif-v1")
