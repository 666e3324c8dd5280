#!/usr/bin/env bash
# Regenerates the README's pictures of the shipped shapes model (docs/images/shapes_*.png).
# Run from the repository root with t2i installed:  bash docs/make_shapes_figures.sh
set -euo pipefail
out=docs/images
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

t2i generate --model shapes "a large red circle on the left" "a small blue square on the right" \
    "a large yellow triangle at the top" "a small green circle at the bottom" \
    "a large purple square in the centre" "a large orange triangle on the right" \
    --num 6 --seed 0 --zoom 4 --out "$work/prompts.png"
t2i generate --model shapes "a large orange circle at the top" --cfg 1 3 --num 8 --seed 0 --zoom 4 --out "$work/guidance.png"
# The samplers at 10 steps each, from the same seeds (Heun: 19 network calls, the others 10).
t2i generate --model shapes "a large orange circle at the top" --sampler ddim euler euler_ancestral heun lms \
    dpmpp_2m dpmpp_2m_sde --steps 10 --num 6 --seed 0 --zoom 4 --out "$work/samplers.png"

python - "$work" <<'PY'
import sys
from PIL import Image
from t2i.data.shapes import Scene, ShapeSpec, draw_scene

work = sys.argv[1]
image = draw_scene(Scene("white", (ShapeSpec("blue", "square", "large", "right"),)), 32)
image.save(f"{work}/input.png")
mask = Image.new("L", image.size, 0)
mask.paste(255, (16, 0, 32, 32))
mask.save(f"{work}/mask.png")
for name, picture in (("input", image), ("mask_right", mask)):
    picture.resize((128, 128), Image.NEAREST).save(f"docs/images/shapes_edit_{name}.png")
PY
t2i generate --model shapes "a large red circle on the left" --image "$work/input.png" --strength 0 0.25 0.5 0.75 1 \
    --num 4 --seed 0 --zoom 4 --out "$work/strengths.png"
t2i generate --model shapes "a large red circle on the right" --image "$work/input.png" --mask "$work/mask.png" \
    --num 4 --seed 0 --zoom 4 --out "$work/inpaint.png"

for name in prompts guidance samplers strengths inpaint; do cp "$work/$name.png" "$out/shapes_$name.png"; done
