"""Peak memory of loading an SD v1-size checkpoint: is each weight held once?

Writes random weights of SD v1's full size (U-Net, VAE and CLIP ViT-L/14 text encoder,
1.07B parameters) as an original single file in float16 (as the common 2 GB SD v1.5
files are), then, in a fresh process per case, loads it with
`t2i.convert.stable_diffusion.load_stable_diffusion` and reports the peak resident set
size against the size of the weights in the dtype asked for, and the peak of the
anonymous part of it (RssAnon, sampled): safetensors memory-maps the file, and its pages
count in RSS while read though the kernel may drop them. A loader that held the file's
tensors and the network's side by side would hold file + weights of anonymous memory.

    python benchmarks/load_memory.py [--dir /tmp] [--keep]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def write_checkpoint(path: Path) -> int:
    from t2i.convert.build import NETWORKS
    from t2i.convert.stable_diffusion import save_original
    from t2i.models.unet import UNetConfig
    from t2i.models.vae import VAEConfig
    from t2i.text.clip import TextEncoderConfig

    configs = {"unet": UNetConfig.sd_v1(), "vae": VAEConfig.sd_v1(), "text_encoder": TextEncoderConfig.sd_v1()}
    networks, generator = {}, torch.Generator().manual_seed(0)
    for name, config in configs.items():
        with torch.device("meta"):
            networks[name] = NETWORKS[name](config)
        networks[name] = networks[name].to_empty(device="cpu").to(torch.float16)
        with torch.no_grad():
            for p in networks[name].parameters():
                p.normal_(0, 0.02, generator=generator)
    save_original(networks, path)
    return sum(p.numel() for n in networks.values() for p in n.parameters())


def peak_rss() -> int:
    """This process's peak resident set size in bytes: VmHWM (Linux), which starts afresh at
    exec, where getrusage's ru_maxrss carries the parent's peak over."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_anon() -> int:
    """Resident anonymous memory in bytes (RssAnon): what the process holds itself, without
    the pages of memory-mapped files, which the kernel can drop and read again."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(path: str, dtype: str) -> dict:
    """Run in a child process: load, then report the peak RSS, and the peak of RssAnon
    sampled every 5 ms while loading."""
    import threading

    from t2i.convert.stable_diffusion import load_stable_diffusion

    before = peak_rss()
    peak_anon, done = [rss_anon()], threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak_anon[0] = max(peak_anon[0], rss_anon())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    networks, _, _ = load_stable_diffusion(path, getattr(torch, dtype))
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    peak_anon[0] = max(peak_anon[0], rss_anon())
    weights = sum(p.numel() * p.element_size() for n in networks.values() for p in n.parameters())
    peak = peak_rss()
    return {"dtype": dtype, "seconds": seconds, "weights_bytes": weights, "peak_rss_bytes": peak,
            "rss_before_bytes": before, "peak_anon_bytes": peak_anon[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where to write the temporary checkpoint")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint file")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child)))
        return
    folder = Path(tempfile.mkdtemp(dir=args.dir))
    path = folder / "sd-v1-random-fp16.safetensors"
    count = write_checkpoint(path)
    gib = 2**30
    print(f"wrote {path}: {count / 1e9:.3f}B parameters, {path.stat().st_size / gib:.2f} GiB (float16)")
    print(f"{'dtype':<9} {'weights GiB':>11} {'peak RSS GiB':>12} {'peak anon GiB':>13} {'anon/weights':>12} "
          f"{'RSS before GiB':>14} {'seconds':>8}")
    for dtype in ("float32", "bfloat16"):
        out = subprocess.run([sys.executable, __file__, "--child", str(path), dtype], check=True,
                             capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{dtype:<9} {r['weights_bytes'] / gib:>11.2f} {r['peak_rss_bytes'] / gib:>12.2f} "
              f"{r['peak_anon_bytes'] / gib:>13.2f} {r['peak_anon_bytes'] / r['weights_bytes']:>12.2f} "
              f"{r['rss_before_bytes'] / gib:>14.2f} {r['seconds']:>8.1f}")
    if not args.keep:
        path.unlink()
        folder.rmdir()


if __name__ == "__main__":
    main()
