#!/usr/bin/env bash
# Regenerates the README's pictures of the shipped emoji model (docs/images/emoji_*.png).
# Run from the repository root with t2i installed:  bash docs/make_emoji_figures.sh [RUN]
# RUN, if given, is the training run folder whose loss.png (running, training-probe and
# held-out-probe loss) is copied as the loss curve.
set -euo pipefail
run=${1:-}
out=docs/images
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The lab's six showcase prompts, four seeds each.
t2i generate --model emoji "a drawing of a star with a jewel in the center" \
    "a drawing of a woman in a red cape" "a drawing of a dragon sitting on its hind legs" \
    "a drawing of a blue sea turtle holding a rock" "a blue and white bird with its wings spread" \
    "a blue and white stuffed animal sitting on top of a white surface" \
    --num 4 --seed 0 --zoom 2 --out "$work/showcase.png"
# A dozen ordinary emoji names, two seeds each.
t2i generate --model emoji "red apple" "dog face" "rocket" "cat face" "birthday cake" "guitar" \
    "butterfly" "banana" "snowman" "rainbow" "octopus" "crown" --num 2 --seed 0 --zoom 2 --out "$work/names.png"
# The same names in 4, 2 and 1 steps: the distilled students (students/steps-N) take the calls.
for n in 4 2 1; do
  t2i generate --model emoji "red apple" "dog face" "rocket" "cat face" "birthday cake" "guitar" \
      "butterfly" "banana" "snowman" "rainbow" "octopus" "crown" --num 2 --seed 0 --zoom 2 --steps $n \
      --out "$work/names_${n}steps.png"
done
# Classifier-free guidance off (cfg 1) and at the model's default, same prompt and seeds.
default_cfg=$(python -c "from t2i import Pipeline; print(Pipeline.load('emoji', 'cpu').defaults['cfg'])")
t2i generate --model emoji "red apple" --cfg 1 "$default_cfg" --num 6 --seed 0 --zoom 2 --out "$work/guidance.png"
# img2img: one input, redrawn to another prompt at four strengths.
t2i generate --model emoji "red apple" --seed 0 --out "$work/input.png"
t2i generate --model emoji "green apple" --image "$work/input.png" --strength 0.25 0.5 0.75 1 \
    --num 4 --seed 0 --zoom 2 --out "$work/strengths.png"
python -c "from PIL import Image; Image.open('$work/input.png').resize((128, 128), Image.NEAREST).save('$work/strength_input.png')"

for name in showcase names names_4steps names_2steps names_1steps guidance strengths strength_input; do cp "$work/$name.png" "$out/emoji_$name.png"; done
if [ -n "$run" ]; then cp "$run/loss.png" "$out/emoji_loss.png"; fi
