"""Textual-inversion embeddings (Gal et al. 2022): AUTOMATIC1111's and diffusers' files give the text encoder
the output diffusers' `load_textual_inversion` gives, on the tiny random pipeline of tests/tiny_sd.py."""

import pytest
import torch
from safetensors.torch import save_file

from t2i.errors import UserError
from t2i.pipeline import Pipeline
from t2i.text.clip_bpe import CLIPTokenizer

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
from tiny_sd import load_reference, tiny_sd_folder  # noqa: E402  (needs diffusers)

WIDTH = 64  # the tiny text encoder's


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_sd_folder(tmp_path_factory.mktemp("embeddings_sd"))


def save_embedding(path, layout, word, vectors):
    """`vectors` [n, width] as AUTOMATIC1111 (.pt, .safetensors) or diffusers (learned_embeds) save them."""
    if layout == "a1111.pt":
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": word, "step": 500,
                    "sd_checkpoint": "abcdef12", "sd_checkpoint_name": "v1-5-pruned-emaonly"}, path)
    elif layout == "a1111.safetensors":
        save_file({"emb_params": vectors}, str(path))
    elif path.suffix == ".bin":
        torch.save({word: vectors[0] if len(vectors) == 1 else vectors}, path)
    else:
        save_file({word: vectors[0] if len(vectors) == 1 else vectors}, str(path))
    return path


FILES = {"a1111.pt": "sks-style.pt", "a1111.safetensors": "sks-style.safetensors",
         "diffusers": "learned_embeds.safetensors", "diffusers.bin": "learned_embeds.bin"}


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("layout", list(FILES))
def test_embedding_files_equal_diffusers_load_textual_inversion(folder, tmp_path, layout, count):
    vectors = torch.randn(count, WIDTH, generator=torch.Generator().manual_seed(count))
    path = save_embedding(tmp_path / FILES[layout], layout, "sks-style", vectors)
    prompts = ["a photo of sks-style on a table", "sks-style, a cat in sks-style"]
    reference = load_reference(folder)
    reference.load_textual_inversion(str(path), token="sks-style")
    with torch.no_grad():
        expected = reference.encode_prompt(prompts, "cpu", 1, False)[0]
    ours = Pipeline.load(folder, device="cpu")
    plain = ours.encode_prompt(prompts)
    assert ours.load_embedding(path) == "sks-style"  # the file's name, or its own word
    torch.testing.assert_close(ours.encode_prompt(prompts), expected, rtol=0, atol=1e-4)
    assert (plain - expected).abs().max() > 0.1
    ids = ours.tokenizer(prompts[0], 77)
    assert ids[0, 4:4 + count].tolist() == list(range(49408, 49408 + count))
    assert ours.tokenizer.decode(ids[0]) == prompts[0]
    assert ours.text_encoder.end_positions(ids).tolist() == [4 + count + 3]  # pooling still finds <|endoftext|>


def test_an_embedding_takes_the_word_given_and_several_load(folder, tmp_path):
    first = save_embedding(tmp_path / "learned_embeds.safetensors", "diffusers", "<cat-toy>", torch.randn(2, WIDTH))
    second = save_embedding(tmp_path / "style.pt", "a1111.pt", "ignored", torch.randn(1, WIDTH))
    ours = Pipeline.load(folder, device="cpu", embeddings=[first, (second, "Bad-Hands")])
    assert ours.text_encoder.token_embedding.num_embeddings == 49408 + 3
    assert ours.tokenizer.encode("<CAT-TOY>s, bad-hands")[1:-1] == [49408, 49409, 338, 267, 49410]
    assert 49410 not in ours.tokenizer.encode("bad-handsome")  # a word of its own only
    with pytest.raises(UserError, match="already added"):
        ours.load_embedding(second, "bad-hands")
    torch.testing.assert_close(ours.text_encoder.token_embedding.weight[49410], torch.load(second)[
        "string_to_param"]["*"][0])


def test_the_original_textual_inversion_codes_parameter_dict_is_read(tmp_path):
    from t2i.convert.embedding_files import read_embedding

    vectors = torch.randn(2, WIDTH)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": torch.nn.ParameterDict({"*": vectors}),
                "name": "sks"}, tmp_path / "sks.pt")
    word, read = read_embedding(tmp_path / "sks.pt")
    assert word == "sks" and torch.equal(read, vectors)


def test_bad_embeddings_are_refused_in_one_line(folder, tmp_path):
    ours = Pipeline.load(folder, device="cpu")
    marker = tmp_path / "ran"

    class RunsCode:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"string_to_param": {"*": torch.zeros(1, WIDTH)}, "payload": RunsCode()}, tmp_path / "evil.pt")
    save_file({"emb_params": torch.zeros(2, 1024)}, str(tmp_path / "sd2.safetensors"))
    save_file({"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}, str(tmp_path / "sdxl.safetensors"))
    save_file({"a": torch.zeros(WIDTH), "b": torch.zeros(WIDTH)}, str(tmp_path / "two.safetensors"))
    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage" * 10)
    torch.save({"*": torch.full((1, WIDTH), float("nan"))}, tmp_path / "nan.bin")
    for name, message in (("evil.pt", "may run code: refused without running it"),
                          ("sd2.safetensors", "an SD 2.x embedding \\(1024 wide\\) does not fit this model's 64-wide "
                                              "text encoder"),
                          ("sdxl.safetensors", "an SDXL embedding"),
                          ("two.safetensors", "not a textual-inversion embedding"),
                          ("garbage.pt", "not a PyTorch checkpoint"),
                          ("nan.bin", "not all finite"),
                          ("missing.pt", "does not exist")):
        with pytest.raises(UserError, match=message) as error:
            ours.load_embedding(tmp_path / name)
        assert "\n" not in str(error.value)
    assert not marker.exists()
    assert ours.text_encoder.token_embedding.num_embeddings == 49408 and not ours.tokenizer.added


def test_tokenizer_words_of_their_own():
    tokenizer = CLIPTokenizer.shipped()
    before = tokenizer.encode("a photo of <tok> and badhand, badhands")
    assert tokenizer.add_word(" BadHand ", [49408]) == "badhand"
    assert tokenizer.encode("BADHAND, badhands") == [49406, 49408, *before[-4:]]  # ", bad hands" as before
    with pytest.raises(UserError, match="cannot be a word of its own"):
        tokenizer.add_word("<|endoftext|>", [49409])
