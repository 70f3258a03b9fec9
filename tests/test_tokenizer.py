from transformers import AutoTokenizer

from cifllm.cif import SPACE_GROUP_SYMBOLS, structure_to_text
from cifllm.tokenization import (
    BOS,
    EOS,
    PAD,
    PROPERTY_TAGS,
    build_tokenizer,
    check_round_trip,
    load_tokenizer,
    save_tokenizer,
    tokenizer_fingerprint,
)


def test_round_trip_exact(structures):
    texts = [structure_to_text(s) for s in structures] + [structure_to_text(s, mode="p1") for s in structures]
    rep = check_round_trip(texts)
    assert rep.n == len(texts) and rep.n_exact == rep.n and rep.n_unk == 0


def test_vocabulary_pieces():
    tok = build_tokenizer()
    vocab = tok.get_vocab()
    for sg in SPACE_GROUP_SYMBOLS:
        assert sg in vocab
    for t in ("data_", "loop_", "_cell_length_a", "Na", "Cl", "Og", *PROPERTY_TAGS[:3], "0", "9", " ", "\n"):
        assert t in vocab, t
    enc = tok.encode("data_Na12Cl12\n_symmetry_space_group_name_H-M P2_1/c\n", add_special_tokens=False)
    assert enc.tokens == ["data_", "Na", "1", "2", "Cl", "1", "2", "\n", "_symmetry_space_group_name_H-M", " ", "P2_1/c", "\n"]
    # an element symbol in a formula is not mistaken for a space group, a space group symbol is one token only after H-M
    assert tok.encode("data_P1", add_special_tokens=False).tokens == ["data_", "P", "1"]


def test_unknown_characters_map_to_unk():
    tok = build_tokenizer()
    ids = tok.encode("data_Å", add_special_tokens=False).ids
    assert tok.token_to_id("<|unk|>") in ids
    assert check_round_trip(["data_Å"]).n_unk == 1


def test_saved_tokenizer_loads_offline(tmp_path, structures):
    save_tokenizer(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (BOS, EOS, PAD)
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    text = structure_to_text(structures[3])
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] != tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    batch = tok(["data_Na", text], padding=True)
    assert batch.input_ids[0][0] == tok.pad_token_id  # left padding for generation
    assert load_tokenizer(tmp_path / "tok").vocab_size == tok.vocab_size


def test_fingerprint_is_stable_and_checked(tmp_path):
    assert tokenizer_fingerprint() == tokenizer_fingerprint(build_tokenizer())
    d = save_tokenizer(tmp_path / "tok")
    meta = (d / "cifllm_tokenizer.json").read_text().replace(tokenizer_fingerprint(), "0" * 16)
    (d / "cifllm_tokenizer.json").write_text(meta)
    import pytest

    with pytest.raises(ValueError, match="fingerprint"):
        load_tokenizer(d)


def test_committed_tokenizer_matches_code():
    from pathlib import Path

    committed = Path(__file__).resolve().parents[1] / "tokenizer" / "cif-v1"
    tok = load_tokenizer(committed)
    assert tokenizer_fingerprint(tok.backend_tokenizer) == tokenizer_fingerprint()
