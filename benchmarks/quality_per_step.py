"""Quality per step: each sampler's images against a 1000-step DDPM reference set, at 5 to 100 steps.

The held-out split's first N captions are drawn with seeds 0..N-1 by every (sampler, steps)
and by DDPM on all 1000 timesteps (the reference); FID is measured against the reference's
Inception features, and a second DDPM-1000 set (seeds N..2N-1) against the first gives the
floor that N images allow. Every set is also scored against the held-out images themselves
(FID to data), so the default sampler's FID can be set against DDPM-1000's. Alignment: is a
generated image's nearest training image (in Inception features) of the prompted emoji
(top-1 / top-5)? The plot is FID to the reference against network calls (Heun calls twice a
step, PC more), the table every row with its seconds.

Each chunk of `--batch-size` images has its features kept in `--work` (under a digest of the
model's files) as soon as it is done, so a stopped run resumes where it stopped: the whole
benchmark at N = 128 is hours of a 2-core CPU (DDPM-1000 alone is 2 × 128 × 1000 image-steps).

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
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from t2i.data.folder import ImageFolder
from t2i.evaluation import cached_features, files_digest
from t2i.images import save_png
from t2i.metrics.alignment import alignment
from t2i.metrics.fid import FIDReference
from t2i.metrics.inception import InceptionFeatures
from t2i.checkpoints import resolve_model
from t2i.pipeline import DEFAULT_MODEL, Pipeline
from t2i.plots import line_plot
from t2i.samplers import SAMPLERS


def chunk_features(pipe, extractor, prompts, seeds, **options) -> tuple[torch.Tensor, float]:
    """Inception features of the images of `prompts` (a seed each), drawn in one call, and its seconds."""
    begin = time.perf_counter()
    images = pipe(prompts, seed=seeds, progress=True, output_type="pt", **options) * 2 - 1
    seconds = time.perf_counter() - begin
    return extractor(images).double().cpu(), seconds


def kept(path: Path, compute) -> tuple[torch.Tensor, float]:
    """`compute()`'s (features, seconds), kept in the file `path` once computed."""
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            return f.get_tensor("features"), float(f.metadata()["seconds"])
    features, seconds = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"features": features.contiguous()}, str(path), metadata={"seconds": repr(seconds)})
    return features, seconds


def set_features(pipe, extractor, prompts, seeds, batch_size, work: Path, name: str,
                 **options) -> tuple[torch.Tensor, float]:
    """A set's features and seconds, each chunk of `batch_size` images kept in `work` as it is done
    (named by sampler, steps and seeds), so that a stopped run loses one chunk at most."""
    def path(first: int, last: int) -> Path:
        return work / f"{name}-seeds{first}-{last}.safetensors"

    whole = path(seeds[0], seeds[-1])  # a one-chunk set, or one an earlier version kept whole
    if whole.is_file():
        return kept(whole, None)
    parts = [kept(path(seeds[i], seeds[min(i + batch_size, len(seeds)) - 1]),
                  lambda i=i: chunk_features(pipe, extractor, prompts[i:i + batch_size], seeds[i:i + batch_size],
                                             **options))
             for i in range(0, len(seeds), batch_size)]
    return torch.cat([features for features, _ in parts]), sum(seconds for _, seconds in parts)


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
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "t2i" / "quality_per_step",
                   help="where each finished set's features are kept, so that a stopped run resumes")
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
    test_features = cached_features(extractor, test, args.cache, True, "inception: held-out")
    train_labels = [train.record(i).get("emoji") for i in range(len(train))]
    cfg = pipe.settings(cfg=None)["cfg"]
    # kept sets belong to one model: the digest of its weights and config names their folder
    model_files = sorted(f for f in resolve_model(args.model).iterdir() if f.suffix in (".safetensors", ".json"))
    work = args.work / f"{Path(str(args.model)).name}-{files_digest(model_files)}"
    print(f"Command: `{shlex.join(['python', 'benchmarks/quality_per_step.py', *sys.argv[1:]])}`")
    print(f"model {args.model!r}, cfg {cfg}, N = {n} held-out captions, seeds 0..{n - 1}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; sets kept in {work}")

    sets = [("ddpm", 1000, 0), ("ddpm", 1000, n)] + [(s, k, 0) for s in args.samplers for k in args.steps]
    features = {}
    for sampler, steps, first in tqdm(sets, desc="sets"):
        features[sampler, steps, first] = set_features(pipe, extractor, prompts, list(range(first, first + n)),
                                                       args.batch_size, work, f"{sampler}-{steps}", sampler=sampler,
                                                       steps=steps)
    to_reference, to_data = FIDReference(features["ddpm", 1000, 0][0]), FIDReference(test_features)
    rows = []
    for (sampler, steps, first), (generated, seconds) in features.items():
        rows.append({"sampler": sampler, "steps": steps, "seeds": f"{first}..{first + n - 1}",
                     "calls": SAMPLERS[sampler].network_calls(steps), "seconds": seconds,
                     "fid": None if (sampler, steps, first) == ("ddpm", 1000, 0) else to_reference(generated),
                     "fid_data": to_data(generated),
                     "alignment": alignment(generated, labels, train_features, train_labels)})

    print(f"\n| sampler | spacing | steps | seeds | network calls | seconds ({n} images) | FID to DDPM-1000 | "
          f"FID to held-out ({len(test)}) | top-1 | top-5 |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        spacing = pipe.settings(sampler=row["sampler"], spacing=None)["spacing"]
        a, to_reference = row["alignment"], "reference" if row["fid"] is None else f"{row['fid']:.2f}"
        print(f"| {row['sampler']} | {spacing} | {row['steps']} | {row['seeds']} | {row['calls']} | "
              f"{row['seconds']:.1f} | {to_reference} | {row['fid_data']:.2f} | {a.top1:.1%} | {a.top5:.1%} |")
    print(f"\nThe second row, a second DDPM-1000 set against the first (the reference), is the FID floor at N = {n}.")
    floor = rows[1]["fid"]
    series = {s: ([r["calls"] for r in rows if r["sampler"] == s], [r["fid"] for r in rows if r["sampler"] == s])
              for s in args.samplers}
    series["DDPM-1000 floor"] = ([min(args.steps), 1000], [floor, floor])
    # the few-step outliers (hundreds) would flatten the region near the floor that the choice is made in
    y_max = 1.25 * floor
    image = line_plot(series, f"FID to 1000-step DDPM, N = {n} (cut at {y_max:.0f}: the table has the rest)",
                      "network calls (log)", "FID", log_x=True, y_max=y_max, markers=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_png(image, args.out, {"command": shlex.join(sys.argv)})
    args.out.with_suffix(".json").write_text(json.dumps(
        [{**{k: v for k, v in r.items() if k != "alignment"}, "top1": r["alignment"].top1, "top5": r["alignment"].top5}
         for r in rows], indent=1))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
