from cifllm.data.corpus import load_corpus, load_manifest


def test_tiny_corpus_loads(tiny_corpus):
    ds = load_corpus(tiny_corpus)
    man = load_manifest(tiny_corpus)
    assert len(ds) == man["n_rows"] >= 40
    assert set(ds["split"]) == {"train", "val"}
    assert len(load_corpus(tiny_corpus, split="val")) == man["n_val"]
    assert all(t.startswith("data_") for t in ds["text"])
