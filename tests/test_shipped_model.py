"""The model that ships inside the package: present, small, in fp16, and following prompts."""

from PIL import Image
from safetensors import safe_open

from t2i.cli import main
from t2i.data.analyze import analyze
from t2i.data.shapes import Scene, ShapeSpec, draw_scene
from t2i.pipeline import DEFAULT_MODEL, Pipeline, shipped_models


def test_the_default_model_ships_small_and_in_fp16():
    folder = shipped_models()[DEFAULT_MODEL]
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 10_000_000  # the 10 MB
    weights = list(folder.glob("*.safetensors"))
    assert {w.name for w in weights} == {"unet.safetensors", "text_encoder.safetensors", "vae.safetensors"}
    for path in weights:
        with safe_open(str(path), "pt") as f:
            assert {f.get_slice(key).get_dtype() for key in f.keys()} == {"F16"}, path.name


def test_the_default_model_draws_what_it_is_asked():
    pipe = Pipeline.load(DEFAULT_MODEL, "cpu")
    asked = [("red", "circle", "left"), ("blue", "square", "right"), ("yellow", "triangle", "top"),
             ("green", "circle", "bottom")]
    where = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
    images = pipe([f"a large {c} {s} {where[p]}" for c, s, p in asked], seed=0, num_images=2, progress=False)
    wanted = [a for a in asked for _ in range(2)]
    drawn = [analyze(image).objects for image in images]
    right = sum(len(objects) == 1 and (objects[0].colour, objects[0].shape, objects[0].position) == want
                for objects, want in zip(drawn, wanted))
    assert right >= 7, drawn  # of 8; the model's measured accuracy over 384 images is in the README


def test_generate_needs_no_model_argument(tmp_path):
    out = tmp_path / "circle.png"
    assert main(["generate", "a large red circle on the left", "--seed", "0", "--out", str(out)]) == 0
    (obj,) = analyze(Image.open(out)).objects
    assert (obj.colour, obj.shape, obj.position) == ("red", "circle", "left")


def test_inpainting_draws_the_prompt_inside_the_mask_and_keeps_the_rest():
    pipe = Pipeline.load(DEFAULT_MODEL, "cpu")
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
