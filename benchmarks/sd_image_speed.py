"""Whole Stable Diffusion v1 images on the CPU: ours against diffusers and OpenVINO, end to end.

One 512×512 image with DPM-Solver++(2M), 20 steps, classifier-free guidance 7.5: the text encoder,
20 guided U-Net calls and the decoder, from the same random SD v1 folder (`peers.py`). Variants:
diffusers float32 (`StableDiffusionPipeline`, `DPMSolverMultistepScheduler`); OpenVINO bf16 (that
diffusers pipeline with its U-Net and decoder compiled by OpenVINO, the text encoder left in torch
float32, a small part of the time); ours with no flags ("t2i default") and in float32 (`--all`: also
diffusers bf16 and OpenVINO f32). The whole calls are timed interleaved, the
first call included (over 20 steps a first call's setup is a small part; at 2 threads one round of
the four default variants takes ~8 minutes). Quality: PSNR of our default image against our float32
image from the same seed, and of each peer's image against diffusers float32's from the same generator.

Run:  python benchmarks/sd_image_speed.py [--dir /tmp/t2i-bench] [--repeats 1] [--all]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

import diffusers
import numpy as np
import torch

from peers import openvino_compiled, sd_folder, setup
from t2i.bench import interleaved_times
from t2i.pipeline import Pipeline

PROMPT = "a photograph of an astronaut riding a horse"
STEPS, CFG, SEED = 20, 7.5, 0


def diffusers_pipeline(folder: Path, dtype: torch.dtype):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, safety_checker=None)
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return lambda: pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=CFG, output_type="np",
                        generator=torch.Generator().manual_seed(SEED)).images[0]


def openvino_pipeline(folder: Path, precision: str):
    """diffusers' pipeline with the U-Net's and the decoder's calls made by OpenVINO."""
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None)
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    unet, decoder = openvino_compiled(folder, "unet", precision), openvino_compiled(folder, "decoder", precision)
    pipe.unet.forward = lambda sample, t, encoder_hidden_states, **_: (
        unet(sample, t.reshape(1).expand(len(sample)).long(), encoder_hidden_states),)
    pipe.vae.decode = lambda z, **_: (decoder(z),)
    pipe.unet.requires_grad_(False)
    return lambda: pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=CFG, output_type="np",
                        generator=torch.Generator().manual_seed(SEED)).images[0]


def ours(folder: Path, dtype: str | None):
    pipe = Pipeline.load(folder, "cpu", dtype)
    return lambda: pipe(PROMPT, sampler="dpmpp_2m", steps=STEPS, cfg=CFG, seed=SEED, output_type="np",
                        progress=False)[0], pipe.dtype


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images with values in [0, 1]."""
    return float(10 * np.log10(1 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=Path("/tmp/t2i-bench"), help="where the random SD folder is kept")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--all", action="store_true", help="also diffusers bf16 and OpenVINO f32")
    args = p.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    folder = sd_folder(args.dir)
    default, dtype = ours(folder, None)
    variants = {"diffusers fp32": diffusers_pipeline(folder, torch.float32),
                "OpenVINO bf16": openvino_pipeline(folder, "bf16"), "t2i fp32": ours(folder, "fp32")[0],
                f"t2i default ({str(dtype).removeprefix('torch.')})": default}
    if args.all:
        variants |= {"diffusers bf16": diffusers_pipeline(folder, torch.bfloat16),
                     "OpenVINO f32": openvino_pipeline(folder, "f32")}
    images = {}

    def keeping(name, fn):  # each timed call's image is kept: no untimed calls
        return lambda: images.__setitem__(name, fn())

    with torch.no_grad():
        times = interleaved_times({name: keeping(name, fn) for name, fn in variants.items()}, args.repeats, warmup=0)
    references = {name: "t2i fp32" if name.startswith("t2i") else "diffusers fp32" for name in variants}

    print(f"Command: `{shlex.join(['python', 'benchmarks/sd_image_speed.py', *sys.argv[1:]])}`")
    print(f"{setup()}; SD v1 (random weights), 512×512, DPM-Solver++(2M) {STEPS} steps, "
          f"cfg {CFG}; median of {args.repeats} interleaved whole calls (text encoder, {STEPS} guided steps, "
          f"decoder)\n")
    base = statistics.median(times["diffusers fp32"])
    print("| pipeline | median s/image | × diffusers fp32 | PSNR dB | against |")
    print("|---|---:|---:|---:|---|")
    for name, ts in times.items():
        against = references[name]
        quality = "—" if against == name else f"{psnr(images[name], images[against]):.1f}"
        print(f"| {name} | {statistics.median(ts):.1f} | {statistics.median(ts) / base:.3f} | {quality} | "
              f"{'—' if against == name else against} |")


if __name__ == "__main__":
    main()
