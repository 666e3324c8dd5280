"""Pipeline and `t2i generate`: prompts to images, reproducible per image, bad input in one line."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.checkpoints import build_components, model_config, save_model
from t2i.cli import main
from t2i.errors import UserError
from t2i.images import read_parameters
from t2i.text.clip import TextEncoderConfig
from t2i.text.words import WordTokenizer
from t2i.models.unet import UNetConfig
from t2i.pipeline import Pipeline
from t2i.samplers import SAMPLERS

CAPTIONS = ["a small red circle on the left", "a large blue square at the top", "a green triangle"]


def perturb(module: torch.nn.Module) -> None:
    """Random weights everywhere, so zero-initialised layers do not hide the prompt's effect."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tokenizer = WordTokenizer.build(CAPTIONS, max_length=8)
    text = TextEncoderConfig(vocab_size=tokenizer.vocab_size, max_length=8, width=16, layers=1, heads=2,
                             intermediate_size=32, eos_token_id=tokenizer.eos_id)
    unet = UNetConfig(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_dim=8,
                      context_dim=16)
    config = model_config(unet, {"schedule": "linear", "num_timesteps": 50}, text, tokenizer, image_size=16,
                          inference={"steps": 5, "cfg": 3.0})
    torch.manual_seed(0)
    components = build_components(config)
    perturb(components)
    out = tmp_path_factory.mktemp("pipe") / "model"
    save_model(out, components, config)
    return out


@pytest.fixture(scope="module")
def pipe(model_dir):
    return Pipeline.load(model_dir, "cpu")


def pixels(images):
    return torch.stack([torch.from_numpy(np.asarray(image).copy()) for image in images])


def test_same_seed_same_pixels_and_batch_does_not_change_an_image(pipe):
    one = pipe("a red circle", seed=7, progress=False)
    again = pipe("a red circle", seed=7, progress=False)
    four = pipe("a red circle", seed=4, num_images=4, progress=False)  # seeds 4, 5, 6, 7
    assert len(one) == 1 and len(four) == 4 and one[0].size == (16, 16)
    assert torch.equal(pixels(one), pixels(again))
    assert torch.equal(pixels(one)[0], pixels(four)[3])
    assert not torch.equal(pixels(four)[0], pixels(four)[1])
    assert [image.info["t2i"]["seed"] for image in four] == [4, 5, 6, 7]


def test_prompt_negative_prompt_and_guidance_change_the_image(pipe):
    base = pixels(pipe("a red circle", seed=1, progress=False))
    assert not torch.equal(base, pixels(pipe("a blue square", seed=1, progress=False)))
    assert not torch.equal(base, pixels(pipe("a red circle", negative_prompt="blue", seed=1, progress=False)))
    assert not torch.equal(base, pixels(pipe("a red circle", cfg=1.0, seed=1, progress=False)))


def test_model_defaults_apply_and_calls_override_them(pipe):
    image = pipe("a green triangle", seed=0, progress=False)[0]
    assert image.info["t2i"]["steps"] == 5 and image.info["t2i"]["cfg"] == 3.0
    image = pipe("a green triangle", seed=0, steps=3, cfg=2.0, sampler="ddpm", progress=False)[0]
    assert (image.info["t2i"]["steps"], image.info["t2i"]["cfg"], image.info["t2i"]["sampler"]) == (3, 2.0, "ddpm")
    image = pipe("a green triangle", seed=0, sampler="dpmpp_2m", progress=False)[0]
    assert image.info["t2i"]["steps"] == 20  # another sampler than the model's: its own usual steps


def test_empty_prompt_is_unconditional_and_long_or_unknown_prompts_warn(pipe):
    empty = pipe("", seed=0, progress=False, output_type="pt")  # at the model's cfg 3, against the empty prompt
    torch.testing.assert_close(empty, pipe("", seed=0, cfg=1.0, progress=False, output_type="pt"))  # so unguided
    with pytest.warns(UserWarning, match="cut to 'a small red circle on the'"):
        pipe("a small red circle on the left a large blue square", seed=0, progress=False)
    with pytest.warns(UserWarning, match="never saw the words zebra"):
        pipe("a red zebra", seed=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe("a red circle", seed=0, progress=False)


def test_unknown_model_name_is_an_error():
    with pytest.raises(UserError, match="no model 'no-such-model'"):
        Pipeline.load("no-such-model")


def test_generate_writes_pngs_that_carry_their_parameters(model_dir, tmp_path, capsys):
    out = tmp_path / "one.png"
    assert main(["generate", "a red circle", "--model", str(model_dir), "--seed", "5", "--cfg", "2",
                 "--negative", "blue", "--out", str(out), "--zoom", "2", "--device", "cpu"]) == 0
    params = read_parameters(out)
    assert params["prompt"] == "a red circle" and params["negative_prompt"] == "blue"
    assert params["seed"] == 5 and params["cfg"] == 2
    with Image.open(out) as image:
        assert image.size == (32, 32)
    grid = tmp_path / "many.png"
    assert main(["generate", "a red circle", "--model", str(model_dir), "--seed", "5", "--cfg", "2", "--num", "3",
                 "--negative", "blue", "--out", str(grid), "--device", "cpu"]) == 0
    assert read_parameters(tmp_path / "many-2.png")["seed"] == 7
    with Image.open(tmp_path / "many-0.png") as first, Image.open(out) as zoomed:
        assert np.array_equal(np.asarray(first), np.asarray(zoomed.resize((16, 16), Image.NEAREST)))


def test_an_over_long_prompt_is_a_one_line_warning(model_dir, tmp_path, capsys):
    assert main(["generate", "a small red circle on the left a large blue square", "--model", str(model_dir),
                 "--out", str(tmp_path / "x.png"), "--device", "cpu"]) == 0
    messages = [line for line in capsys.readouterr().err.splitlines() if line.startswith("t2i:")]
    assert len(messages) == 1 and messages[0].startswith("t2i: warning: the prompt is 13 tokens"), messages


def test_eval_prompts_and_nll_run_on_a_text_model(model_dir, tmp_path, capsys):
    import json

    from t2i.evaluation import PromptComparison, PromptReport

    report = tmp_path / "prompts.json"
    assert main(["eval", "prompts", "--model", str(model_dir), "--per-prompt", "1", "--prompts-per-pair", "1",
                 "--cfg", "1", "3", "--json", str(report), "--device", "cpu"]) == 0
    comparison = PromptComparison([PromptReport(**r) for r in json.loads(report.read_text())["reports"]])
    assert [(r.cfg, r.images) for r in comparison.reports] == [(1, {"seen": 20, "held-out": 4}),
                                                               (3, {"seen": 20, "held-out": 4})]
    assert capsys.readouterr().out == f"{comparison}\nwrote {report}\n"
    assert main(["eval", "nll", "--model", str(model_dir), "--num-images", "4", "--terms", "3",
                 "--device", "cpu"]) == 0
    assert "bits/dim" in (out := capsys.readouterr().out) and "of each image given its caption" in out


def test_editing_an_image_with_strength_and_mask(pipe):
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8))
    same = pipe("a red circle", image=source, strength=0.0, seed=0, progress=False)[0]
    assert np.array_equal(np.asarray(same), np.asarray(source)) and same.info["t2i"]["strength"] == 0.0
    edited = pipe("a red circle", image=source, strength=0.6, seed=0, progress=False)[0]
    assert edited.size == (24, 16) and not np.array_equal(np.asarray(edited), np.asarray(source))
    mask = np.zeros((16, 24), np.uint8)
    mask[:, 12:] = 255
    inpainted = np.asarray(pipe("a red circle", image=source, mask=Image.fromarray(mask), seed=0, progress=False)[0])
    assert np.array_equal(inpainted[:, :12], np.asarray(source)[:, :12])
    assert not np.array_equal(inpainted[:, 12:], np.asarray(source)[:, 12:])


@pytest.mark.parametrize("options, match", [
    ({"image": Image.new("RGB", (17, 16))}, "divisible by 2"),
    ({"image": Image.new("RGB", (16, 16)), "mask": Image.new("L", (8, 8))}, "the same size"),
    ({"mask": Image.new("L", (16, 16))}, "a mask needs the image"),
    ({"image": Image.new("RGB", (16, 16)), "strength": 1.5}, "strength must be a finite number from 0 to 1"),
])
def test_bad_editing_input_is_an_error(pipe, options, match):
    with pytest.raises(UserError, match=match):
        pipe("a red circle", seed=0, progress=False, **options)


def test_width_and_height_set_the_size_and_bad_sides_are_refused(pipe, model_dir, tmp_path, capsys):
    wide = pipe("a red circle", seed=0, width=24, height=16, progress=False)[0]
    assert wide.size == (24, 16) and wide.info["t2i"]["size"] == [16, 24]
    assert pipe("a red circle", seed=0, progress=False)[0].size == (16, 16)  # the size it was trained at
    for size, match in [({"width": 17}, r"17×16; this model needs sides divisible by 2: choose such sides "
                                         r"\((16|18)×16, say\)"),
                        ({"height": 0}, "height must be a whole number from 1 to 16384, got 0"),
                        ({"image": Image.new("RGB", (16, 16)), "width": 24}, "keeps its size, 16×16")]:
        with pytest.raises(UserError, match=match):
            pipe("a red circle", seed=0, progress=False, **size)
    out = tmp_path / "wide.png"
    assert main(["generate", "a red circle", "--width", "32", "--height", "16", "--seed", "0", "--model",
                 str(model_dir), "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.size == (32, 16)
    capsys.readouterr()
    assert main(["generate", "a red circle", "--width", "15", "--model", str(model_dir), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "divisible by 2" in error[0]


def test_generate_writes_the_strength_grid(model_dir, tmp_path):
    source = tmp_path / "in.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(source)
    out = tmp_path / "strengths.png"
    assert main(["generate", "a red circle", "--model", str(model_dir), "--image", str(source), "--strength", "0.25",
                 "0.5", "0.75", "1", "--out", str(out), "--device", "cpu"]) == 0
    with Image.open(out) as grid:
        assert grid.size == (5 * 18 + 2, 18 + 2)
    assert read_parameters(out)["strength"] == [0.25, 0.5, 0.75, 1.0]
    assert read_parameters(tmp_path / "strengths-3.png")["strength"] == 1.0


def test_generate_writes_a_grid_row_per_prompt_and_cfg(model_dir, tmp_path):
    out = tmp_path / "rows.png"
    assert main(["generate", "a red circle", "a blue square", "--cfg", "1", "4", "--num", "3", "--seed", "2",
                 "--model", str(model_dir), "--out", str(out), "--device", "cpu"]) == 0
    with Image.open(out) as grid:
        assert grid.size == (3 * 18 + 2, 4 * 18 + 2)
    params = read_parameters(out)
    assert params["prompt"] == ["a red circle", "a red circle", "a blue square", "a blue square"]
    assert params["cfg"] == [1, 4, 1, 4]
    last = read_parameters(tmp_path / "rows-11.png")
    assert (last["prompt"], last["cfg"], last["seed"]) == ("a blue square", 4, 4)


def test_generate_writes_a_grid_row_per_sampler(model_dir, tmp_path):
    """A sampler comparison from one seed, as other tools' X/Y plots: each row its own sampler, grid and steps."""
    out = tmp_path / "samplers.png"
    assert main(["generate", "a red circle", "--sampler", "ddim", "euler", "dpmpp_2m", "--steps", "6", "--seed", "5",
                 "--model", str(model_dir), "--out", str(out), "--device", "cpu"]) == 0
    params = read_parameters(out)
    assert params["sampler"] == ["ddim", "euler", "dpmpp_2m"]
    rows = [read_parameters(tmp_path / f"samplers-{i}.png") for i in range(3)]
    assert [(r["sampler"], r["spacing"], r["steps"], r["seed"]) for r in rows] == [
        ("ddim", "leading", 6, 5), ("euler", "karras", 6, 5), ("dpmpp_2m", "logsnr", 6, 5)]
    with Image.open(tmp_path / "samplers-0.png") as a, Image.open(tmp_path / "samplers-1.png") as b:
        assert a.tobytes() != b.tobytes()
    assert main(["generate", "a red circle", "--sampler", "ddim", "heun_x", "--model", str(model_dir),
                 "--out", str(tmp_path / "x.png")]) == 2  # every name checked before any runs


def test_a_grid_stopped_by_ctrl_c_keeps_the_rows_that_ended(model_dir, tmp_path, monkeypatch, capsys):
    from t2i import Pipeline

    calls, run = [], Pipeline.__call__

    def stopped_in_the_second_row(self, *args, **kwargs):
        calls.append(kwargs["cfg"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return run(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "__call__", stopped_in_the_second_row)
    out = tmp_path / "cfgs.png"
    assert main(["generate", "a red circle", "--cfg", "1", "4", "--num", "2", "--seed", "3", "--model",
                 str(model_dir), "--out", str(out), "--device", "cpu"]) == 130
    assert sorted(path.name for path in tmp_path.glob("cfgs*")) == ["cfgs-0.png", "cfgs-1.png"]  # no grid
    assert [read_parameters(tmp_path / f"cfgs-{i}.png")["seed"] for i in range(2)] == [3, 4]
    assert "kept the 2 images of the rows that ended: cfgs-0.png..cfgs-1.png" in capsys.readouterr().err


def test_settings_come_from_the_call_then_the_model_then_the_defaults(pipe):
    model_sampler = pipe.defaults["sampler"]
    assert pipe.settings(sampler=None, steps=None, spacing=None) == {
        "sampler": model_sampler, "steps": pipe.defaults["steps"], "spacing": SAMPLERS[model_sampler].spacing}
    # another sampler brings its own steps and grid, unless the call names them
    assert pipe.settings(sampler="euler", steps=None, spacing=None) == {"sampler": "euler", "steps": 30,
                                                                         "spacing": "karras"}
    assert pipe.settings(sampler="euler", spacing=None) == {"sampler": "euler", "spacing": "karras"}
    assert pipe.settings(sampler="dpmpp_2m", steps=7, spacing="leading") == {"sampler": "dpmpp_2m", "steps": 7,
                                                                             "spacing": "leading"}


def test_output_types_mean_what_they_mean_in_diffusers(pipe):
    call = dict(prompt="a red circle", seed=3, num_images=2, progress=False)
    pil = pixels(pipe(**call)).float() / 255  # [B, H, W, 3]
    pt = pipe(**call, output_type="pt")
    assert pt.shape == (2, 3, 16, 16) and pt.min() >= 0 and pt.max() <= 1
    torch.testing.assert_close(pt.permute(0, 2, 3, 1), pil, atol=1 / 255, rtol=0)
    np_images = pipe(**call, output_type="np")
    assert isinstance(np_images, np.ndarray) and np_images.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(np_images, pt.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    latents = pipe(**call, output_type="latent")  # what the U-Net sampled, before decoding
    assert latents.shape == (2, pipe.latent_channels, 16 // pipe.downsample_factor, 16 // pipe.downsample_factor)
    torch.testing.assert_close(((pipe.decode(latents) + 1) / 2).clamp(0, 1), pt)
    with pytest.raises(UserError, match="output_type must be one of 'pil', 'np', 'pt', 'latent', not 'tensor'"):
        pipe(**call, output_type="tensor")


@pytest.mark.parametrize("chunk,problem", [
    ("t2i", '{"prompt": "x", "seed": 1, "size": [64]}'), ("t2i", '{"prompt": "x", "seed": 1, "sampler": 3}'),
    ("t2i", '{"prompt": "x", "seed": 1, "loras": {"a": "b"}}'), ("t2i", '{"prompt": "x", "seed": 1, "cfg": NaN}'),
    ("parameters", "x\nSteps: 20, CFG scale: nan, Seed: 1, Size: " + "9" * 5000 + "x1"),
])
def test_a_damaged_parameters_chunk_reads_as_one_line_or_is_left_out(tmp_path, chunk, problem):
    from PIL import PngImagePlugin

    from t2i.metadata import to_infotext

    info = PngImagePlugin.PngInfo()
    info.add_text(chunk, problem)
    Image.new("RGB", (8, 8)).save(tmp_path / "damaged.png", pnginfo=info)
    if chunk == "t2i":
        with pytest.raises(UserError, match="written by something else, or damaged"):
            read_parameters(tmp_path / "damaged.png")
    else:  # AUTOMATIC1111's own reading leaves out what it cannot read: so does ours
        parameters = read_parameters(tmp_path / "damaged.png")
        assert parameters == {"prompt": "x", "negative_prompt": "", "steps": 20, "seed": 1}
        assert to_infotext(parameters) == "x\nSteps: 20, Seed: 1"


def test_a_generated_png_carries_automatic1111_parameters_too(pipe, tmp_path):
    from t2i.images import save_png
    from t2i.metadata import from_infotext

    image = pipe("a red circle", negative_prompt="blue", seed=11, sampler="euler", steps=4, cfg=2.5,
                 progress=False)[0]
    path = save_png(image, tmp_path / "a.png")
    with Image.open(path) as saved:
        infotext = saved.info["parameters"]
    assert infotext.startswith("a red circle\nNegative prompt: blue\nSteps: 4, Sampler: Euler Karras, CFG scale: 2.5, "
                               "Seed: 11, Size: 16x16")
    back = from_infotext(infotext)
    assert {k: back[k] for k in ("prompt", "negative_prompt", "steps", "sampler", "spacing", "cfg", "seed", "size")} \
        == {"prompt": "a red circle", "negative_prompt": "blue", "steps": 4, "sampler": "euler", "spacing": "karras",
            "cfg": 2.5, "seed": 11, "size": [16, 16]}
    # a PNG that only AUTOMATIC1111 wrote reads back into our names
    theirs = tmp_path / "theirs.png"
    from PIL import PngImagePlugin
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat, masterpiece\nNegative prompt: blurry\nSteps: 30, Sampler: DPM++ 2M Karras, "
                                "CFG scale: 7, Seed: 42, Size: 512x768, Model hash: abc123, Model: v1-5")
    Image.new("RGB", (8, 8)).save(theirs, pnginfo=info)
    assert read_parameters(theirs) == {"prompt": "a cat, masterpiece", "negative_prompt": "blurry", "steps": 30,
                                       "sampler": "dpmpp_2m", "spacing": "karras", "cfg": 7.0, "seed": 42,
                                       "size": [768, 512], "model": "v1-5"}
