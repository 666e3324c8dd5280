"""The images that the README's commands make, pinned: `tests/test_pinned_images.py` checks
that a refactoring leaves them as they were. Run this file to write the references anew
(only after a change that is meant to alter images, saying so in its commit)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from t2i import Pipeline

PINNED = Path(__file__).parent / "data" / "pinned"
DOCS = Path(__file__).parent.parent / "docs" / "images"

# name → (model, the pipe(...) arguments); every sampler, guidance on and off, editing
CASES = {
    "emoji_red_apple": ("emoji", dict(prompt="red apple", seed=0)),
    "shapes_cfg1": ("shapes", dict(prompt="a large orange circle at the top", cfg=1.0, seed=0)),
    "shapes_cfg3": ("shapes", dict(prompt="a large orange circle at the top", cfg=3.0, seed=1)),
    "shapes_negative": ("shapes", dict(prompt="a small circle", negative_prompt="red", seed=2)),
    **{f"shapes_{sampler}": ("shapes", dict(prompt="a small green triangle", sampler=sampler, steps=steps, seed=3))
       for sampler, steps in (("ddpm", 20), ("ddim", 10), ("euler", 10), ("euler_ancestral", 10), ("heun", 6),
                              ("lms", 10), ("dpmpp_2m", 8), ("dpmpp_2m_sde", 8), ("langevin", 8), ("pc", 8))},
    "shapes_karras_ddim": ("shapes", dict(prompt="a blue square", sampler="ddim", spacing="karras", steps=10, seed=4)),
    "shapes_img2img": ("shapes", dict(prompt="a large red circle on the left", strength=0.5, seed=0,
                                      image="shapes_edit_input.png")),
    "shapes_inpaint": ("shapes", dict(prompt="a large red circle on the right", seed=0, image="shapes_edit_input.png",
                                      mask="shapes_edit_mask_right.png")),
}


def make(name: str, pipes: dict) -> Image.Image:
    model, arguments = CASES[name]
    arguments = dict(arguments)
    for key in ("image", "mask"):
        if key in arguments:
            arguments[key] = Image.open(DOCS / arguments[key]).convert("RGB" if key == "image" else "L")
    if model not in pipes:
        pipes[model] = Pipeline.load(model, "cpu")
    return pipes[model](progress=False, **arguments)[0]


if __name__ == "__main__":
    PINNED.mkdir(parents=True, exist_ok=True)
    pipes: dict = {}
    for name in CASES:
        make(name, pipes).save(PINNED / f"{name}.png")
        print("wrote", name)
