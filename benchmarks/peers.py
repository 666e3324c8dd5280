"""The peers our Stable Diffusion benchmarks time beside us, all from one random SD v1 folder
(`t2i.random_weights.random_sd_v1_folder`, float16 on disk as SD v1.5 is downloaded):

- diffusers' U-Net and decoder, loaded as a diffusers user loads them (`torch_dtype=`);
- OpenVINO: the same diffusers networks converted by `openvino.convert_model` to IR files once (float32
  weights), then read and compiled for the CPU with `INFERENCE_PRECISION_HINT` f32 or bf16, as a CPU user
  who picks OpenVINO for speed runs them;
- ours: `Pipeline.load`'s networks, in the precision and layout it picks by default or in float32.

Peak memory is each variant's own: `measure_peak` runs a variant's loading and one call in a fresh process.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch

SIDE = 64  # SD v1's latents for 512×512 images
PRECISIONS = {"f32": torch.float32, "bf16": torch.bfloat16}


def sd_folder(directory: Path) -> Path:
    """The random SD v1 diffusers folder in `directory`, written on first use."""
    from t2i.random_weights import random_sd_v1_folder

    folder = directory / "sd-v1-random"
    if not (folder / "model_index.json").is_file():
        random_sd_v1_folder(folder)
    return folder


def unet_inputs(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One guided step's U-Net inputs at 512²: latents [2, 4, 64, 64], timesteps, a [2, 77, 768] context."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, SIDE, SIDE, generator=generator), torch.full((batch,), 500),
            torch.randn(batch, 77, 768, generator=generator))


def diffusers_unet(folder: Path, dtype: torch.dtype):
    import diffusers

    return diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype).eval()


def diffusers_vae(folder: Path, dtype: torch.dtype):
    import diffusers

    return diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype).eval()


class _UNetCall(torch.nn.Module):
    """diffusers' U-Net as a function of three tensors, for tracing."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class _Decode(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, z):
        return self.vae.decode(z, return_dict=False)[0]


def openvino_ir(folder: Path, part: str) -> Path:
    """The IR (.xml + .bin, float32 weights) of diffusers' `part` ("unet" or "decoder"), converted once."""
    import openvino as ov

    path = folder / "openvino" / f"{part}.xml"
    if not path.is_file():
        with torch.no_grad():
            if part == "unet":
                model = ov.convert_model(_UNetCall(diffusers_unet(folder, torch.float32)), example_input=unet_inputs())
            else:
                model = ov.convert_model(_Decode(diffusers_vae(folder, torch.float32)),
                                         example_input=(torch.randn(1, 4, SIDE, SIDE),))
        path.parent.mkdir(exist_ok=True)
        ov.save_model(model, path, compress_to_fp16=False)
    return path


def openvino_compiled(folder: Path, part: str, precision: str) -> Callable[..., torch.Tensor]:
    """`part` compiled by OpenVINO for this CPU in `precision` ("f32" or "bf16"): a function of tensors."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(openvino_ir(folder, part)), "CPU",
                                  {"INFERENCE_PRECISION_HINT": precision})
    return lambda *inputs: torch.from_numpy(compiled([x.numpy() for x in inputs])[0])


def peak_rss() -> int:
    """This process's peak resident set size in bytes (VmHWM, which starts afresh at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_peak(script: str, folder: Path, variant: str) -> int:
    """The peak RSS in bytes of loading `variant` and calling it once, in a fresh process running
    `script --child FOLDER VARIANT` (which prints {"peak": bytes} last)."""
    out = subprocess.run([sys.executable, script, "--child", str(folder), variant], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak"]


def setup() -> str:
    """The machine and the versions a result was measured with: CPU flags that decide the kernels, torch,
    diffusers, OpenVINO, threads."""
    import diffusers
    import openvino

    from t2i.devices import cpu_flags

    flags = " ".join(sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}))
    return (f"{platform.processor() or platform.machine()}, flags {flags}; torch {torch.__version__}, diffusers "
            f"{diffusers.__version__}, OpenVINO {openvino.__version__.split('-')[0]}, "
            f"{torch.get_num_threads()} threads")
