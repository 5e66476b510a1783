"""Tokenizer training (polymodal.text.train_tokenizer): the same texts give the same tokenizer,
so every tiny model seeded from it (tests, demos) has the same weights in every process."""

from __future__ import annotations

import json
from pathlib import Path

from polymodal.text import SPECIAL_TOKENS, load_tokenizer, train_tokenizer

TEXTS = ["whisk the eggs with sugar, then fold in the flour", "bake the cake for 30 minutes",
         "chop the basil and the tomatoes", "boil the pasta; drain; toss with butter"] * 3


def vocab(folder: Path) -> dict[str, int]:
    return json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]


def test_a_small_corpus_gives_the_same_vocabulary_every_time(tmp_path):
    # the tokenizers trainer breaks ties between equally frequent pieces differently per run
    runs = [vocab(Path(train_tokenizer(TEXTS, str(tmp_path / f"t{i}"), vocab_size=400))) for i in range(3)]
    assert runs[0] == runs[1] == runs[2]
    assert list(runs[0])[:len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    tok = load_tokenizer(str(tmp_path / "t0"))
    assert tok.convert_ids_to_tokens(tok("whisk the eggs")["input_ids"]) == ["[CLS]", "whisk", "the", "eggs", "[SEP]"]
    # a word never seen falls back to its characters, never to [UNK]
    assert "[UNK]" not in tok.convert_ids_to_tokens(tok("beets")["input_ids"])


def test_a_large_corpus_uses_the_trainer_with_ids_in_a_fixed_order(tmp_path):
    out = tmp_path / "small-vocab"
    v = vocab(Path(train_tokenizer(TEXTS, str(out), vocab_size=60)))  # fewer than the words: merges
    learned = [t for t, _ in sorted(v.items(), key=lambda kv: kv[1])][len(SPECIAL_TOKENS):]
    assert learned == sorted(learned, key=lambda t: (t.startswith("##"), t))
    assert len(v) <= 60
    tok = load_tokenizer(str(out))
    assert max(len(tok(w, add_special_tokens=False)["input_ids"]) for w in ("tomatoes", "minutes")) >= 2
