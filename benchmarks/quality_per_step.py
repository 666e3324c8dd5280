"""Quality per step: each sampler's images against a 1000-step DDPM reference set, at 5 to 100 steps.

The held-out split's first N captions are drawn with seeds 0..N-1 by every (sampler, steps)
and by DDPM on all 1000 timesteps (the reference); FID is measured against the reference's
Inception features, and a second DDPM-1000 set (seeds N..2N-1) against the first gives the
floor that N images allow. Alignment: is a generated image's nearest training image (in
Inception features) of the prompted emoji (top-1 / top-5)? The plot is FID against network
calls (Heun calls twice a step, PC and Langevin more), the table every row with its seconds.

Run:  python benchmarks/quality_per_step.py --model emoji --data data/emoji [--num-images 128]
          [--samplers ddim euler ...] [--steps 5 10 20 50 100] [--out docs/images/quality_per_step.png]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from t2i.data.folder import ImageFolder
from t2i.evaluate import cached_features
from t2i.images import save_png
from t2i.metrics.alignment import alignment
from t2i.metrics.fid import fid
from t2i.metrics.inception import InceptionFeatures
from t2i.pipeline import DEFAULT_MODEL, Pipeline
from t2i.plots import line_plot
from t2i.sampling import SAMPLERS, network_calls


def features_of(pipe, extractor, prompts, seeds, batch_size, **options) -> tuple[torch.Tensor, float]:
    """Inception features of the images of `prompts` (seed per image), and the seconds generating took."""
    chunks, seconds = [], 0.0
    for start in range(0, len(prompts), batch_size):
        begin = time.perf_counter()
        images = pipe(prompts[start:start + batch_size], seed=seeds[start:start + batch_size], progress=False,
                      output_type="tensor", **options)
        seconds += time.perf_counter() - begin
        chunks.append(extractor(images).double().cpu())
    return torch.cat(chunks), seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--data", required=True, help="the dataset folder the model was trained on (its held-out split)")
    p.add_argument("--num-images", type=int, default=128)
    p.add_argument("--samplers", nargs="+", default=["ddim", "euler", "euler_ancestral", "heun", "lms", "dpmpp_2m",
                                                      "dpmpp_2m_sde", "pc"])
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "t2i" / "fid")
    p.add_argument("--out", type=Path, default=Path("docs/images/quality_per_step.png"))
    args = p.parse_args()
    unknown = set(args.samplers) - set(SAMPLERS)
    if unknown:
        sys.exit(f"unknown samplers: {', '.join(sorted(unknown))}")

    pipe = Pipeline.load(args.model, "cpu")
    test = ImageFolder(args.data, pipe.image_size, "test", captioned=True)
    train = ImageFolder(args.data, pipe.image_size, "train", captioned=True)
    n = min(args.num_images, len(test))
    prompts, labels = [test.caption(i) for i in range(n)], [test.record(i).get("emoji") for i in range(n)]
    extractor = InceptionFeatures("cpu")
    train_features = cached_features(extractor, train, args.cache, True, "inception: training")
    train_labels = [train.record(i).get("emoji") for i in range(len(train))]
    cfg = pipe.settings(cfg=None)["cfg"]
    print(f"Command: `{shlex.join(['python', 'benchmarks/quality_per_step.py', *sys.argv[1:]])}`")
    print(f"model {args.model!r}, cfg {cfg}, N = {n} held-out captions, seeds 0..{n - 1}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")

    reference, ref_seconds = features_of(pipe, extractor, prompts, list(range(n)), args.batch_size,
                                         sampler="ddpm", steps=1000)
    second, _ = features_of(pipe, extractor, prompts, list(range(n, 2 * n)), args.batch_size, sampler="ddpm",
                            steps=1000)
    rows = [{"sampler": "ddpm", "steps": 1000, "calls": 1000, "seconds": ref_seconds, "fid": fid(second, reference),
             "alignment": alignment(reference, labels, train_features, train_labels)}]
    for sampler in args.samplers:
        for steps in tqdm(args.steps, desc=sampler):
            features, seconds = features_of(pipe, extractor, prompts, list(range(n)), args.batch_size,
                                            sampler=sampler, steps=steps)
            rows.append({"sampler": sampler, "steps": steps, "calls": network_calls(sampler, steps),
                         "seconds": seconds, "fid": fid(features, reference),
                         "alignment": alignment(features, labels, train_features, train_labels)})

    print("\n| sampler | spacing | steps | network calls | seconds (N images) | FID to DDPM-1000 | top-1 | top-5 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        spacing = pipe.settings(sampler=row["sampler"], spacing=None)["spacing"]
        a = row["alignment"]
        print(f"| {row['sampler']} | {spacing} | {row['steps']} | {row['calls']} | {row['seconds']:.1f} | "
              f"{row['fid']:.2f} | {a.top1:.1%} | {a.top5:.1%} |")
    print(f"\nThe first row is a second DDPM-1000 set (seeds {n}..{2 * n - 1}) against the reference: the FID floor "
          f"at N = {n}.")
    floor = rows[0]["fid"]
    series = {s: ([r["calls"] for r in rows if r["sampler"] == s], [r["fid"] for r in rows if r["sampler"] == s])
              for s in args.samplers}
    series["DDPM-1000 floor"] = ([min(args.steps), 1000], [floor, floor])
    image = line_plot(series, f"FID to 1000-step DDPM, N = {n}", "network calls (log)", "FID", log_x=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_png(image, args.out, {"command": shlex.join(sys.argv)})
    args.out.with_suffix(".json").write_text(json.dumps(
        [{**{k: v for k, v in r.items() if k != "alignment"}, "top1": r["alignment"].top1, "top5": r["alignment"].top5}
         for r in rows], indent=1))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
