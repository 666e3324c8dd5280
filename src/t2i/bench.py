"""Measuring speed honestly: FLOPs, a practical peak, interleaved medians, and `t2i bench`
(`time_generation`, whose report prints as a markdown table a device).

Every figure is a median over repeats after a warm-up; FLOPs come from
`torch.utils.flop_counter.FlopCounterMode`, to which the CPU's fused-attention ops are added
(it has no formula for them, and would count attention as free); the peak is what a large
fp32 matrix product reaches on the same device in the same run, since a shared machine's
speed drifts by 2× over a day and only ratios measured together mean anything.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from .devices import DTYPES, PRECISIONS, resolve_dtype
from .errors import UserError
from .models.layers import linear_pointwise
from .pipeline import DEFAULT_MODEL, Pipeline
from .samplers import get_sampler

aten = torch.ops.aten
# Ops torch's FLOP counter has no formula for. On CPU, F.scaled_dot_product_attention runs as ops that take the
# flash-attention ops' arguments (query, key, value first; grad_out first in backward), so their formulas apply.
EXTRA_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *_, **__: sdpa_flop_count(q, k, v),
    aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda g, q, k, v, *_, **__: sdpa_backward_flop_count(g, q, k, v),
}


def linear_flops(x: torch.Size, w: torch.Size) -> int:
    return 2 * math.prod(x[:-1]) * w[1] * w[0]


# oneDNN's linear layers with fused epilogues (`layers.epilogues_fuse`) count their products, as a linear layer's
# (element-wise work is counted nowhere). The counter looks formulas up by op, not overload: `.default` takes
# (x, W, b, attr, scalars, algorithm), `.binary` (x, other, W, b, attr).
if linear_pointwise() is not None:
    EXTRA_FLOPS[linear_pointwise()] = lambda x, *args, **__: linear_flops(x, args[0] if len(args) == 5 else args[1])


def count_flops(fn: Callable[[], object]) -> int:
    """The floating-point operations of one call of `fn` (a multiply-add counts 2)."""
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Seconds one call of `fn` takes, the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                        device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """Every function's times over `repeats` rounds, one call of each per round in an order that
    alternates between rounds, after `warmup` calls each: a drift in the machine's speed then
    reaches all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            times[name].append(timed(fns[name], device))
    return times


def matmul_peak_gflops(device: torch.device | str = "cpu", n: int = 2048, repeats: int = 5,
                       dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of an n×n matrix product in `dtype` on `device`, best of `repeats`: a practical peak."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    return 2 * n**3 / min(timed(lambda: torch.mm(a, b), device) for _ in range(repeats)) / 1e9


@dataclass
class PartTiming:
    """One part of a generation: its median seconds and its FLOPs (a multiply-add counts 2)."""

    part: str
    seconds: float
    flops: int

    @property
    def gflop(self) -> float:
        return self.flops / 1e9

    @property
    def gflops(self) -> float:
        return self.gflop / self.seconds


@dataclass
class BenchRun:
    """The parts of one generation on one device (and CPU thread count), at the model's defaults."""

    device: str
    threads: int | None  # CPU threads; None on a GPU
    precision: str  # the networks' dtype, by its short name: "fp32", "bf16", "fp16"
    sampler: str
    steps: int
    cfg: float
    image_size: int
    peak_gflops: float  # this device's matmul peak in the run's precision, measured in the same run
    parts: list[PartTiming]

    @property
    def name(self) -> str:
        where = f"{self.device} {self.precision}"
        return f"{where}, {self.threads} thread{'s' * (self.threads > 1)}" if self.threads else where

    def part(self, name: str) -> PartTiming:
        return next(p for p in self.parts if p.part == name)

    def __str__(self) -> str:
        size = f"{self.image_size}×{self.image_size}"
        lines = [f"{self.name}: {self.sampler}, {self.steps} steps, cfg {self.cfg}, {size}; "
                 f"matmul peak {self.peak_gflops:.0f} GFLOP/s",
                 "| part | seconds | GFLOP | GFLOP/s | of peak |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {p.part} | {p.seconds:.4f} | {p.gflop:.2f} | {p.gflops:.1f} | {p.gflops / self.peak_gflops:.0%} |"
                  for p in self.parts]
        return "\n".join(lines)


@dataclass
class BenchReport:
    """`t2i bench`: a run per device and thread count, and how much faster the whole call is on
    each later run than on the first."""

    model: str
    prompt: str
    batch: int
    repeats: int
    torch_version: str
    cpu_capability: str
    runs: list[BenchRun]

    @property
    def speedups(self) -> dict[str, float]:
        """The first run's whole-call seconds over each later run's, by run name."""
        first = self.runs[0].part("whole call").seconds
        return {run.name: first / run.part("whole call").seconds for run in self.runs[1:]}

    def __str__(self) -> str:
        blocks = [f"t2i bench: model {self.model!r}, prompt {self.prompt!r}, batch {self.batch}, median of "
                  f"{self.repeats}; torch {self.torch_version}, CPU kernels {self.cpu_capability}"]
        blocks += [str(run) for run in self.runs]
        blocks += [f"{name}: the whole call {ratio:.2f}× as fast as on {self.runs[0].name}"
                   for name, ratio in self.speedups.items()]
        return "\n\n".join(blocks)


def pipeline_figures(pipe, prompt: str, batch: int, repeats: int) -> BenchRun:
    """The time of each part of generating `batch` images of `prompt` at `pipe`'s defaults: the text
    encoder (prompt, and the empty prompt when guided), one U-Net call (on 2B rows when guided, as
    classifier-free guidance runs it; B for an unconditional model or cfg 1), the decoder, and the
    whole call; each with its FLOPs, beside this device's matmul peak."""
    device = pipe.device
    settings = pipe.settings(sampler=None, steps=None, cfg=None)
    side = pipe.image_size // pipe.downsample_factor
    conditional = pipe.text_encoder is not None
    prompt = prompt if conditional else ""  # an unconditional model takes no prompt
    guided = conditional and settings["cfg"] != 1
    prompts = [prompt] * batch + [""] * batch * guided
    unet_step = "U-Net, one guided step" if guided else "U-Net, one step"
    with torch.no_grad():
        cond = pipe.encode_prompts(prompts) if conditional else {}
        x = torch.randn(len(prompts), pipe.unet.config.in_channels, side, side, device=device, dtype=pipe.dtype)
        t = torch.full((len(prompts),), 500, device=device)
        z = torch.randn(batch, pipe.latent_channels, side, side, device=device)
        parts = {unet_step: lambda: pipe.unet(x, t, **cond)}
        if pipe.text_encoder is not None:
            parts["text encoder"] = lambda: pipe.encode_prompts(prompts)
        if pipe.vae is not None:
            parts["decoder"] = lambda: pipe.decode(z)
        flops = {name: count_flops(fn) for name, fn in parts.items()}
        parts["whole call"] = lambda: pipe(prompt=prompt, num_images=batch, seed=0, progress=False)
        calls = get_sampler(settings["sampler"]).network_calls(settings["steps"])
        flops["whole call"] = flops[unet_step] * calls + sum(
            flops[name] for name in ("text encoder", "decoder") if name in flops)
        times = interleaved_times(parts, repeats, device=device)
    cpu = torch.device(device).type == "cpu"
    precision = next(short for short, name in PRECISIONS.items() if DTYPES[name] == pipe.dtype)
    return BenchRun(str(device), torch.get_num_threads() if cpu else None, precision, settings["sampler"],
                    settings["steps"], settings["cfg"], pipe.image_size, matmul_peak_gflops(device, dtype=pipe.dtype),
                    [PartTiming(name, statistics.median(ts), flops[name]) for name, ts in times.items()])


def time_generation(model: str = DEFAULT_MODEL, prompt: str = "red apple", batch: int = 1, repeats: int = 5,
                    devices: Sequence[str] | None = None, threads: Sequence[int] | None = None,
                    channels_last: bool = False, compile: bool = False, winograd: bool = False,
                    precisions: Sequence[str] | None = None) -> BenchReport:
    """`pipeline_figures` of `model` on each of `devices` (default: the CPU, and CUDA when there is a
    GPU), in each of `precisions` ("fp32", "bf16", "fp16"; default: the one `Pipeline.load` picks there), on the
    CPU once per thread count of `threads` (default: torch's own); the speed options are `Pipeline.optimize`'s
    (`winograd` on the CPU only, in float32). Torch's thread count is restored afterwards."""
    devices = devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for precision in precisions or []:  # an unknown name, or Winograd's other than float32, before any model loads
        if resolve_dtype(precision) != torch.float32 and winograd:
            raise UserError(f"--winograd computes in float32 on the CPU, not in {precision}: leave out "
                            "--precision or ask for fp32")
    own_threads = torch.get_num_threads()
    runs = []
    try:
        for device in devices:
            for precision in precisions or [None]:
                for count in (threads or [own_threads]) if device == "cpu" else [None]:
                    if count:
                        torch.set_num_threads(count)
                    fast = winograd and device == "cpu"  # Winograd's kernel is float32 on the CPU
                    pipe = Pipeline.load(model, device, "fp32" if fast else precision)
                    pipe.optimize(channels_last, compile, winograd=fast)
                    runs.append(pipeline_figures(pipe, prompt, batch, repeats))
    finally:
        torch.set_num_threads(own_threads)
    return BenchReport(str(model), prompt, batch, repeats, torch.__version__, torch.backends.cpu.get_cpu_capability(),
                       runs)
