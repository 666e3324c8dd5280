"""Tokenizers: CLIP's BPE against transformers on a vocabulary trained here, the word
tokenizer's round trips, padding, truncation and the errors a user can meet."""

import gzip
import json
import os
import random
import re
import unicodedata
from collections import Counter

import pytest
import torch

from t2i.errors import UserError
from t2i.text.clip_bpe import END_OF_WORD, CLIPTokenizer, bytes_to_unicode, merge_pair, split_words
from t2i.text.tokenizers import load_tokenizer
from t2i.text.words import WordTokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers only ever reads the folders written here

PROMPTS = [
    "a photo of a cat",
    "A Photo Of An ASTRONAUT riding a horse on the MOON",
    "don't stop, it's 3:45pm!!! we're here; they'll go, I'm fine, you'd see, I've ''quoted'' 'S 'LL x's 'sun",
    "  extra   whitespace\tand\nnewlines  \u00a0nbsp\u3000ideographic space ",
    "café crème brûlée, naïve façade, e\u0301 composed",
    "emoji 🐱🚀 and 👍🏽 thumbs ❤️ hearts",
    "numbers 1234567890 and 3.14159, 1e-3, ½ Ⅻ ٣٤",
    "punctuation... (brackets) [square] {curly} <angle> \"quotes\" --- ~tilde~ ’curly’ «guillemets» a_b",
    "mixed-case CamelCase snake_case kebab-case ＦＵＬＬ width",
    "masterpiece, best quality, (ultra-detailed:1.2), 8k, trending on artstation",
    "<|startoftext|>a<|endoftext|>b",
    "",
]
CORPUS = PROMPTS + [
    "the quick brown fox jumps over the lazy dog",
    "a painting of a red house by the sea in the style of van gogh",
    "an astronaut riding a horse on the moon, photorealistic, detailed",
    "there is a cat and a dog sitting on the sofa in the living room",
] * 3


def train_merges(corpus: list[str], steps: int) -> list[tuple[str, str]]:
    """BPE learning (Sennrich et al. 2016, Algorithm 1) over CLIP's pre-tokens of `corpus`:
    merge the most frequent adjacent pair of symbols, `steps` times."""
    byte_symbols = bytes_to_unicode()
    words = Counter()
    for text in corpus:
        for word in split_words(unicodedata.normalize("NFC", text).lower()):
            symbols = [byte_symbols[b] for b in word.encode("utf-8")]
            words[(*symbols[:-1], symbols[-1] + END_OF_WORD)] += 1
    merges = []
    for _ in range(steps):
        pairs = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        merged = Counter()
        for word, n in words.items():
            merged[tuple(merge_pair(list(word), best))] += n
        words = merged
    return merges


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary layout: byte symbols, the same with </w>, merge results, markers."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + END_OF_WORD for s in symbols] + [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    merges = train_merges(CORPUS, 200)  # too few to make every word one token
    CLIPTokenizer(clip_vocab(merges), merges).save(folder)
    return folder


@pytest.fixture(scope="module")
def reference(clip_folder):
    transformers = pytest.importorskip("transformers")
    return transformers.CLIPTokenizer.from_pretrained(str(clip_folder))


def test_words_a_diffusers_tokenizer_folder_adds_keep_their_ids_and_ours_keep_them_too(reference, tmp_path):
    hf = reference.__class__.from_pretrained(str(reference.name_or_path))
    hf.add_tokens(["<cat-toy>"])  # what diffusers' textual inversion does before it saves the pipeline
    hf.save_pretrained(str(tmp_path / "saved"))
    ours = CLIPTokenizer.from_folder(tmp_path / "saved")
    expected = hf("a <cat-toy> on a mat").input_ids
    assert ours("a <cat-toy> on a mat", len(expected))[0].tolist() == expected
    assert ours.added == {"<cat-toy>": [len(hf) - 1]}
    ours.save(tmp_path / "ours")  # and a folder of ours written from it reads back the same
    assert CLIPTokenizer.from_folder(tmp_path / "ours").added == ours.added


def test_bytes_to_unicode_is_a_printable_bijection():
    symbols = bytes_to_unicode()
    assert sorted(symbols) == list(range(256)) and len(set(symbols.values())) == 256
    assert all(s.isprintable() and not s.isspace() for s in symbols.values())
    assert symbols[ord("a")] == "a" and symbols[ord(" ")] == "Ġ"  # GPT-2's well-known space symbol


def test_split_words_matches_the_regex_pattern():
    regex = pytest.importorskip("regex")
    pattern = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
    pool = "ab'zé\u0301ΣςДж日本のstdrevmlÅ0123٣½Ⅻ²!?.,-_'’\"()🐱👍🏽\u200d\ufe0f \t\n\u00a0\u3000"
    rng = random.Random(0)
    texts = PROMPTS + ["".join(rng.choice(pool) for _ in range(rng.randrange(1, 30))) for _ in range(500)]
    for text in texts:
        assert split_words(text) == pattern.findall(text), text


def test_clip_ids_and_text_match_transformers(clip_folder, reference):
    ours = CLIPTokenizer.from_folder(clip_folder)
    assert len(ours.merges) == 200 and ours.vocab_size == len(reference.get_vocab())
    for prompt in PROMPTS:
        ids = ours.encode(prompt)
        assert ids == reference(prompt)["input_ids"], prompt
        if "<|" not in prompt:  # ours stops reading at an end marker; transformers skips it
            assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True), prompt


def test_clip_padding_and_truncation_match_transformers(clip_folder, reference):
    ours = CLIPTokenizer.from_folder(clip_folder)
    for length in (3, 5, 16, 77):
        expected = reference(PROMPTS, padding="max_length", max_length=length, truncation=True,
                             return_tensors="pt")["input_ids"]
        got = ours(PROMPTS, max_length=length, truncate=True)
        assert got.dtype == torch.long and torch.equal(got, expected), length


def test_clip_too_long_prompt_is_a_user_error(clip_folder):
    ours = CLIPTokenizer.from_folder(clip_folder, max_length=8)
    assert ours(["a cat"]).shape == (1, 8)
    with pytest.raises(UserError, match=r"the prompt is 1[0-9] tokens; the text encoder takes at most 8"):
        ours(["a photo of an astronaut riding a horse"])
    row = ours(["a photo of an astronaut riding a horse"], truncate=True)[0]
    assert row[0] == ours.bos_id and row[-1] == ours.eos_id and ours.eos_id not in row[1:-1].tolist()


def test_clip_pad_token_and_length_come_from_the_folder_config(clip_folder, tmp_path):
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((clip_folder / name).read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 10, "pad_token": "<|endoftext|>"}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "!"}}))  # as SD v2's
    ours = CLIPTokenizer.from_folder(tmp_path)
    ids = ours(["a cat"])
    assert ids.shape == (1, 10) and ours.pad_id == ours.vocab["!"]
    end = ids[0].tolist().index(ours.eos_id)
    assert ids[0, end + 1:].eq(ours.pad_id).all() and ours.decode(ids[0]) == "a cat"
    again = load_tokenizer(ours.to_dict(), tmp_path)
    assert (again.pad_id, again.max_length) == (ours.pad_id, 10)


def test_clip_from_openai_file_rebuilds_the_vocabulary(clip_folder, tmp_path):
    merges = CLIPTokenizer.from_folder(clip_folder).merges
    path = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as file:
        file.write('"bpe_simple_vocab_16e6.txt#version: 0.2\n' + "".join(f"{a} {b}\n" for a, b in merges))
    ours = CLIPTokenizer.from_openai_file(path)
    assert ours.vocab == clip_vocab(merges) and ours.max_length == 77


def test_word_tokenizer_builds_and_round_trips_through_json():
    captions = ["A red circle on the left.", "a blue square, top", "a red triangle", "2 red circles"]
    tok = WordTokenizer.build(captions, max_length=6)
    assert tok.vocab[:6] == ["<pad>", "<bos>", "<eos>", "<unk>", "a", "red"]
    again = load_tokenizer(json.loads(json.dumps(tok.to_dict())))
    assert isinstance(again, WordTokenizer) and again.vocab == tok.vocab and again.max_length == 6
    ids = again(["a red circle", "A GREEN circle!"])
    assert ids.tolist() == [[1, 4, 5, 8, 2, 0], [1, 4, 3, 8, 2, 0]]
    assert again.decode(ids[1]) == "a <unk> circle" and again.decode(again.encode("2 red circles")) == "2 red circles"


def test_word_tokenizer_lengths_and_limits():
    tok = WordTokenizer.build(["one two three four five"], min_count=1, max_words=3)
    assert tok.vocab_size == 7 and tok(["five"]).tolist() == [[1, 4, 2]]
    assert tok(["one", "one two three"]).shape == (2, 5)  # the longest in the batch, without max_length
    with pytest.raises(UserError, match="the prompt is 5 tokens; the text encoder takes at most 4"):
        tok(["one two three"], max_length=4)
    assert tok(["one two three"], max_length=4, truncate=True).tolist() == [[1, 6, 3, 2]]
    with pytest.raises(UserError, match="at least 2"):
        tok(["one"], max_length=1)
    with pytest.raises(UserError, match="outside the vocabulary"):
        tok.decode([99])


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(UserError, match="unknown tokenizer type 'sentencepiece'"):
        load_tokenizer({"type": "sentencepiece"})
    with pytest.raises(UserError, match="none was given"):
        load_tokenizer({"type": "clip_bpe"})
    with pytest.raises(UserError, match="vocab.json' is missing"):
        load_tokenizer({"type": "clip_bpe"}, tmp_path)
    with pytest.raises(UserError, match=r"unknown TokenizerSettings keys \['lowercase'\]"):
        load_tokenizer({"type": "word", "vocab": list(WordTokenizer.SPECIALS), "lowercase": True})
    with pytest.raises(UserError, match="must start with"):
        load_tokenizer({"type": "word", "vocab": ["cat"]})
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(UserError, match="merge 1 is 'a b c', not two symbols"):
        CLIPTokenizer.from_folder(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(UserError, match=re.escape("no <|startoftext|>")):
        CLIPTokenizer.from_folder(tmp_path)


def varied_prompts(count: int, seed: int = 0) -> list[str]:
    """`count` prompts as people write them: words, weights, punctuation, numbers, other
    scripts and emoji, odd spacing, and some far past 77 tokens."""
    rng = random.Random(seed)
    words = ("a photo of an astronaut riding horse on the moon cat dog portrait landscape painting by greg rutkowski "
             "highly detailed 8k unreal engine octane render trending artstation masterpiece best quality "
             "cinematic lighting don't it's we're they'll I'm you'd I've Ultra-Detailed HDR RAW photo").split()
    extras = ["café", "naïve", "Straße", "東京", "日本の風景", "москва", "ελληνικά", "🐱", "🚀🌕", "👍🏽", "❤️", "½",
              "３ｄ", "Ⅻ", "٣٤", "(masterpiece:1.2)", "[[blue]]", "{red|green}", "--ar 16:9", "#art", "@user",
              "1920x1080", "3.14159", "1e-3", "$100", "50%", "a/b", "x_y", "…", "—", "“quoted”", "'single'",
              "<|endoftext|>", "\u00a0", "\t", "\n", "  "]
    prompts = []
    for i in range(count):
        n = rng.choice((1, 3, 8, 15, 30)) if i % 10 else rng.randrange(60, 120)  # every tenth too long
        parts = [rng.choice(extras) if rng.random() < 0.25 else rng.choice(words) for _ in range(n)]
        seps = [rng.choice((" ", " ", ", ", ". ", "! ", "? ", "; ", "-", "  ")) for _ in parts]
        text = "".join(p + s for p, s in zip(parts, seps)).strip()
        # markers stay lower-case: transformers' fast tokenizer splits "<|ENDOFTEXT|>" into pieces, we follow
        # OpenAI's CLIP, which reads it as the marker (test_capital_markers_are_markers)
        prompts.append(text.upper().replace("<|ENDOFTEXT|>", "<|endoftext|>") if i % 17 == 0 else text)
    return prompts


@pytest.fixture(scope="module")
def shipped_reference(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("clip_shipped")
    CLIPTokenizer.shipped().save(folder)
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def test_shipped_vocabulary_matches_transformers_on_520_prompts(shipped_reference):
    ours = CLIPTokenizer.shipped()
    assert ours.vocab_size == 49408 and ours.max_length == 77
    assert ours.encode("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]  # SD v1's ids
    prompts = varied_prompts(520)
    assert sum(len(ours.encode(p)) > 77 for p in prompts) >= 50
    expected = shipped_reference(prompts, padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt")["input_ids"]
    got = ours(prompts, truncate=True)
    mismatched = [p for p, a, b in zip(prompts, got, expected) if not torch.equal(a, b)]
    assert not mismatched, mismatched[:3]


def test_over_long_prompt_is_read_in_chunks_or_as_diffusers_reads_it_cut_with_a_warning():
    from t2i.text.clip import CLIPTextTransformer, TextEncoderConfig
    from t2i.models.unet import UNet, UNetConfig
    from t2i.diffusion import Diffusion
    from t2i.pipeline import Pipeline

    tokenizer = CLIPTokenizer.shipped()
    encoder = CLIPTextTransformer(TextEncoderConfig(width=16, layers=1, heads=1, intermediate_size=32))
    unet = UNet(UNetConfig(in_channels=4, out_channels=4, model_channels=16, channel_mult=(1,), attention_levels=(0,),
                           context_dim=16))
    pipe = Pipeline(unet, Diffusion.from_schedule("scaled_linear"), 8, encoder, tokenizer)
    prompt = " ".join(["a beautiful landscape"] * 40)
    assert pipe.encode_prompt(prompt).shape == (1, 2 * 77, 16)  # 120 tokens: two chunks of 75, as AUTOMATIC1111
    pipe.emphasis = False
    with pytest.warns(UserWarning, match="the prompt is 122 tokens and the text encoder reads 77: it was cut to"):
        context = pipe.encode_prompt(prompt)
    assert context.shape == (1, 77, 16)


def test_capital_markers_are_markers():
    ours = CLIPTokenizer.shipped()
    ids = ours.encode("a <|ENDOFTEXT|> b")
    assert ids == ours.encode("a <|endoftext|> b") and ids[:3] == [49406, 320, 49407] and len(ids) == 5
