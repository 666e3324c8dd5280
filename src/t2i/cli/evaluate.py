"""`t2i eval ...` and `t2i bench`: each calls the library and prints the report object it returns."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .common import PRECISION_NAMES, DefaultsFormatter, path_arg, positive, seed_arg


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained model")
    which = p.add_subparsers(dest="metric", required=True, metavar="METRIC")
    nll = which.add_parser("nll", help="negative log-likelihood (variational bound) in bits/dim on held-out data",
                           formatter_class=DefaultsFormatter)
    nll.add_argument("--model", required=True, help="a pixel-space model folder")
    nll.add_argument("--data", default="shapes", help="'shapes' or a folder of images; its test split is used")
    nll.add_argument("--split", default="test", choices=("train", "test", "all"))
    nll.add_argument("--num-images", type=positive(int, 1_000_000), default=256)
    nll.add_argument("--batch-size", type=positive(int, 4096), default=64)
    nll.add_argument("--terms", type=positive(int), default=None,
                     help="evaluate this many random terms of the bound (unbiased estimate); default: all T")
    nll.add_argument("--variance", default="beta", help="σ_t² of p_θ: beta (tighter bound) or beta_tilde")
    nll.add_argument("--seed", type=seed_arg, default=0)
    nll.add_argument("--device", default="auto")
    nll.set_defaults(run=run_eval_nll)

    vae = which.add_parser("vae", help="how well an autoencoder reconstructs held-out images (PSNR)",
                           formatter_class=DefaultsFormatter)
    vae.add_argument("--model", required=True, help="an autoencoder or latent model folder, or a shipped model")
    vae.add_argument("--data", default="shapes", help="'shapes' or a folder of images")
    vae.add_argument("--split", default="test", choices=("train", "test", "all"))
    vae.add_argument("--num-images", type=positive(int, 1_000_000), default=512)
    vae.add_argument("--batch-size", type=positive(int, 4096), default=128)
    vae.add_argument("--device", default="auto")
    vae.set_defaults(run=run_eval_vae)

    prompts = which.add_parser("prompts", help="how often generated images show what their prompts ask for",
                               formatter_class=DefaultsFormatter)
    prompts.add_argument("--model", default="shapes", help="a shipped model's name or a model folder (shapes)")
    prompts.add_argument("--cfg", type=float, nargs="+", default=None,
                         help="guidance scales to compare; default: the model's")
    prompts.add_argument("--per-prompt", type=positive(int, 1024), default=4, help="images per prompt")
    prompts.add_argument("--prompts-per-pair", type=positive(int, 100), default=2,
                         help="prompts per colour × shape pair")
    prompts.add_argument("--steps", type=positive(int), default=None)
    prompts.add_argument("--sampler", default=None)
    prompts.add_argument("--batch-size", type=positive(int, 4096), default=64)
    prompts.add_argument("--seed", type=seed_arg, default=0)
    prompts.add_argument("--device", default="auto")
    prompts.add_argument("--json", type=path_arg, default=None, help="also write the results here")
    prompts.set_defaults(run=run_eval_prompts)
    add_eval_fid(which)


def add_eval_fid(which) -> None:
    fid = which.add_parser("fid", help="FID, KID and text alignment of generated images on a held-out split",
                           formatter_class=DefaultsFormatter)
    fid.add_argument("--model", required=True, help="a model folder or a shipped model's name")
    fid.add_argument("--data", required=True, type=Path,
                     help="a folder with train/ and test/ metadata.jsonl (e.g. from `t2i data emoji`)")
    fid.add_argument("--num-images", type=positive(int), default=None,
                     help="generate for the first N held-out captions (default: all of them)")
    fid.add_argument("--no-floor", dest="floor", action="store_false",
                     help="skip scoring N training images against the held-out split")
    fid.add_argument("--kid-subsets", type=positive(int, 10_000), default=100,
                     help="random subsets of min(1000, N, held-out) images KID is averaged over (one estimate when "
                          "both sets are that size)")
    fid.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's)")
    fid.add_argument("--steps", type=positive(int), default=None, help="sampling steps (default: the model's)")
    fid.add_argument("--sampler", default=None, help="sampler (default: the model's)")
    fid.add_argument("--batch-size", type=positive(int, 4096), default=32, help="images generated at once")
    fid.add_argument("--seed", type=seed_arg, default=0, help="image i of the held-out captions uses seed + i")
    fid.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "t2i" / "fid",
                     help="where the dataset's Inception features are kept")
    fid.add_argument("--prompts", default=None, metavar="FILE",
                     help="generate from these prompts instead (JSON lines of {\"text\", \"emoji\"}); 'phrasings': "
                          "the held-out prompts phrased as people write them. Scored against the dataset's images of "
                          "the emoji they ask for, without the floor")
    fid.add_argument("--canonical", action="store_true",
                     help="with --prompts: generate from each prompt's emoji name instead (the before of a phrasing)")
    fid.add_argument("--device", default="auto")
    fid.set_defaults(run=run_eval_fid)


def run_eval_fid(args) -> None:
    from ..evaluation import sample_quality
    from ..pipeline import Pipeline

    pipe = Pipeline.load(args.model, args.device)
    if pipe.text_encoder is None:
        raise UserError(f"{args.model} is unconditional: `t2i eval fid` generates from the held-out captions")
    prompts = None
    if args.prompts:
        from ..evaluation.quality import PHRASINGS, read_prompts

        prompts = read_prompts(PHRASINGS if args.prompts == "phrasings" else args.prompts)
        if args.canonical:
            if not all(isinstance(p.get("name"), str) for p in prompts):
                raise UserError("--canonical needs each prompt's emoji \"name\" in the file")
            prompts = [{**p, "text": p["name"]} for p in prompts]
    elif args.canonical:
        raise UserError("--canonical applies to --prompts: give the prompts file too")
    print(sample_quality(pipe, str(args.data), args.num_images, args.batch_size, args.seed, args.floor, args.cache,
                         args.kid_subsets, prompts=prompts, cfg=args.cfg, steps=args.steps, sampler=args.sampler))


def run_eval_nll(args) -> None:
    from ..data import load_dataset
    from ..evaluation import nll_on_dataset
    from ..pipeline import Pipeline

    pipe = Pipeline.load(args.model, args.device)
    if pipe.vae is not None:
        raise UserError(f"{args.model} is a latent model: its bits/dim would be of latents, not of pixels, so "
                        "`t2i eval nll` takes pixel-space models only")
    captioned = pipe.text_encoder is not None
    dataset = load_dataset(args.data, pipe.image_size, args.split, captioned=captioned)
    print(nll_on_dataset(pipe.unet, pipe.diffusion, dataset, args.num_images, args.batch_size, args.terms,
                         args.variance, args.seed, pipe.device, condition=pipe.encode_prompts if captioned else None))


def run_eval_vae(args) -> None:
    from ..evaluation import autoencoder_psnr

    print(autoencoder_psnr(args.model, args.data, args.split, args.num_images, args.batch_size, args.device))


def run_eval_prompts(args) -> None:
    import dataclasses
    import json

    from ..data.shapes_prompts import shapes_prompt_set
    from ..files import check_writable, durable_write_bytes
    from ..evaluation import compare_cfgs
    from ..pipeline import Pipeline

    if args.json is not None:
        check_writable(args.json, "--json")
    pipe = Pipeline.load(args.model, args.device)
    report = compare_cfgs(pipe, shapes_prompt_set(args.prompts_per_pair), args.cfg or [None], args.per_prompt,
                          args.seed, args.batch_size, steps=args.steps, sampler=args.sampler)
    print(report)
    if args.json:
        # in the report's own order (write_json sorts keys): the groups read back as they printed
        durable_write_bytes(args.json, (json.dumps(dataclasses.asdict(report), indent=2) + "\n").encode())
        print(f"wrote {args.json}")


def add_bench(sub) -> None:
    from ..pipeline import DEFAULT_MODEL

    p = sub.add_parser("bench", help="time generation part by part, on the CPU and on a GPU if there is one",
                       formatter_class=DefaultsFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="a shipped model's name, a model folder or an SD v1 "
                   "checkpoint")
    p.add_argument("--prompt", default="red apple", help="the prompt generated")
    p.add_argument("--batch", type=positive(int, 4096), default=1, help="images per call")
    p.add_argument("--repeats", type=positive(int, 1000), default=5, help="timed calls of each part (median)")
    p.add_argument("--device", nargs="+", default=None, help="default: cpu, and cuda when there is a GPU")
    p.add_argument("--precision", nargs="+", default=None, choices=PRECISION_NAMES,
                   help="the networks' precisions to time, each on every device (default: each device's default, "
                        "as t2i generate picks it)")
    p.add_argument("--channels-last", action="store_true", help="NHWC feature maps (Pipeline.optimize)")
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net (minutes on the first call)")
    p.add_argument("--winograd", action="store_true", help="Winograd F(4×4, 3×3) convolutions (Pipeline.optimize)")
    p.add_argument("--threads", type=positive(int, 256), nargs="+", default=None,
                   help="CPU thread counts to time (default: torch's own, one per core)")
    p.set_defaults(run=run_bench)


def run_bench(args) -> None:
    from ..bench import time_generation

    print(time_generation(args.model, args.prompt, args.batch, args.repeats, args.device, args.threads,
                          args.channels_last, args.compile, args.winograd, args.precision))
