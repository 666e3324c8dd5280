"""AUTOMATIC1111's prompt syntax on CLIP models: emphasis "(word:1.5)", "[word]", BREAK, and prompts longer
than CLIP's 75 tokens in chunks (`t2i.text.emphasis`)."""

from __future__ import annotations

import pytest
import torch

from t2i import Pipeline
from t2i.text.clip_bpe import CLIPTokenizer
from t2i.text.emphasis import CHUNK, parse_emphasis, weighted_chunks

pytest.importorskip("diffusers")
from tiny_sd import tiny_sd_folder  # noqa: E402


@pytest.mark.parametrize("prompt,runs", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.3 * 1.1 * 1.1), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.1 ** 4), (".", 1.1)]),
    ("a cat BREAK a dog", [("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)]),
    ("a ratio 16:9 and a smile :)", [("a ratio 16:9 and a smile :)", 1.0)]),  # nothing to close: literal
    ("", [("", 1.0)]),
])
def test_emphasis_is_read_as_automatic1111_reads_it(prompt, runs):
    parsed = parse_emphasis(prompt)
    assert [text for text, _ in parsed] == [text for text, _ in runs]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in runs])


@pytest.mark.parametrize("prompt", ["a (cat:1.2.3)", "a (cat:.)", "a (cat:" + "9" * 400 + ")"])
def test_an_emphasis_weight_that_is_no_finite_number_is_refused_in_one_line(prompt):
    from t2i.errors import UserError

    with pytest.raises(UserError, match="is not a number"):
        parse_emphasis(prompt)


def test_long_prompts_take_chunks_of_75_ending_at_a_near_comma_or_a_break():
    tokenizer = CLIPTokenizer.shipped()
    cat, dog, comma = (tokenizer.text_to_ids(word)[0] for word in ("cat", "dog", ","))
    chunks = weighted_chunks(tokenizer, "cat " * 100)
    assert [len(ids) for ids, _ in chunks] == [CHUNK + 2] * 2
    assert chunks[0][0] == [tokenizer.bos_id, *[cat] * 75, tokenizer.eos_id]
    assert chunks[1][0] == [tokenizer.bos_id, *[cat] * 25, tokenizer.eos_id, *[tokenizer.pad_id] * 50]
    # a comma 5 tokens before the chunk's end: the 4 tokens after it move to the next chunk with the rest
    first, second = weighted_chunks(tokenizer, "cat " * 70 + ", " + "dog " * 10)
    assert first[0][1:73] == [*[cat] * 70, comma, tokenizer.eos_id]
    assert second[0][1:12] == [*[dog] * 10, tokenizer.eos_id]
    assert len(weighted_chunks(tokenizer, "a cat BREAK a dog")) == 2
    ids, weights = weighted_chunks(tokenizer, "a (cat:1.5)")[0]
    assert ids[:4] == [tokenizer.bos_id, tokenizer.text_to_ids("a")[0], cat, tokenizer.eos_id]
    assert weights[:4] == [1.0, 1.0, 1.5, 1.0] and set(weights[4:]) == {1.0}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return Pipeline.load(tiny_sd_folder(tmp_path_factory.mktemp("emphasis_sd")), "cpu")


def test_a_weighted_token_scales_its_states_and_the_chunk_keeps_its_mean(pipe):
    plain = pipe.encode_prompts(["a cat on a mat"])["context"]
    weighted = pipe.encode_prompts(["a (cat:1.5) on a mat"])["context"]
    assert weighted.shape == plain.shape == (1, 77, plain.shape[-1])
    ratio = weighted / plain  # c·w per token: w = 1.5 at "cat" (position 2), 1 elsewhere
    c = ratio[0, 0].mean()
    torch.testing.assert_close(ratio[0, 2], torch.full_like(ratio[0, 2], 1.5) * c, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ratio[0, 5], torch.full_like(ratio[0, 5], 1.0) * c, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(weighted.mean(), plain.mean(), rtol=1e-5, atol=1e-6)
    pipe.emphasis = False  # as written, as diffusers reads it: the brackets and numbers are words
    try:
        literal = pipe.encode_prompts(["a (cat:1.5) on a mat"])["context"]
        assert not torch.allclose(literal, weighted)
    finally:
        pipe.emphasis = True


def test_a_long_prompt_is_read_whole_and_its_negative_takes_as_many_chunks(pipe):
    long = "a cat sitting on a red mat, " * 12  # 96 tokens: two chunks, nothing cut
    context = pipe.encode_prompts([long, "a dog"])["context"]
    assert context.shape[1] == 2 * 77
    chunks = weighted_chunks(pipe.tokenizer, long)
    with torch.no_grad():
        first = pipe.text_encoder(torch.tensor([chunks[0][0]]))
        empty = pipe.encode_prompts([""])["context"]
    torch.testing.assert_close(context[:1, :77], first)
    torch.testing.assert_close(context[1:, 77:], empty)  # the shorter prompt padded with the empty prompt's chunk
    cond, guidance = pipe.condition([long], ["blurry"], 7.5, 0.0)
    assert guidance.uncond["context"].shape == cond["context"].shape
    image = pipe(long, negative_prompt="blurry", steps=2, seed=0, width=16, height=16, progress=False)[0]
    assert image.size == (16, 16)
