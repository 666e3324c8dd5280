"""`t2i export`, `t2i convert` and `t2i data`: model folders and datasets on disk."""

from __future__ import annotations

from pathlib import Path

from .common import DefaultsFormatter, fraction, path_arg, positive


def add_export(sub) -> None:
    from ..schedules import SPACINGS

    p = sub.add_parser("export", help="copy a trained model for shipping: fp16 weights, generation defaults",
                       formatter_class=DefaultsFormatter)
    p.add_argument("--model", required=True, help="a model folder written by `t2i train`, or a shipped model")
    p.add_argument("--out", required=True, type=path_arg)
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    p.add_argument("--cfg", type=float, default=None, help="the model's default guidance scale")
    p.add_argument("--steps", type=positive(int), default=None, help="the model's default number of steps")
    p.add_argument("--sampler", default=None, help="the model's default sampler")
    p.add_argument("--spacing", choices=SPACINGS, default=None, help="the model's default grid spacing")
    p.set_defaults(run=run_export)


def run_export(args) -> None:
    from ..checkpoints import export_model, resolve_model
    from ..devices import resolve_dtype
    from ..sampling import check_guidance, get_sampler

    inference = {k: v for k, v in (("cfg", args.cfg), ("steps", args.steps), ("sampler", args.sampler),
                                   ("spacing", args.spacing)) if v is not None}
    if args.cfg is not None:
        check_guidance(args.cfg)
    if args.sampler is not None:
        get_sampler(args.sampler)
    folder_out(args.out, "an exported model")
    out = export_model(resolve_model(args.model), args.out, resolve_dtype(args.dtype), inference)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20  # its students too
    print(f"wrote {out} ({size:.1f} MiB)")


def folder_out(path: Path, what: str) -> None:
    """Refuse a destination that is, or is named as, a weights file where a model folder is written."""
    from ..convert.tensors import PICKLES, SAFETENSORS
    from ..errors import UserError

    if path.is_file() or path.suffix in SAFETENSORS + PICKLES:
        raise UserError(f"{str(path)!r} names a file, and {what} is a folder: give a folder's name")


def add_convert(sub) -> None:
    from ..convert.stable_diffusion import FORMATS

    p = sub.add_parser("convert", help="convert a Stable Diffusion v1/2.x checkpoint (single file, diffusers folder)",
                       formatter_class=DefaultsFormatter)
    p.add_argument("src", type=Path, help="an SD v1 .safetensors/.ckpt file, a diffusers folder or a t2i folder")
    p.add_argument("dst", type=Path, help="the folder to write (a .safetensors file for --to original)")
    p.add_argument("--to", choices=FORMATS, default="t2i", help="t2i: our model folder; diffusers; original: "
                   "one file in SD's own names")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="cast the weights; default: as stored")
    p.set_defaults(run=run_convert)


def run_convert(args) -> None:
    from ..convert.stable_diffusion import convert
    from ..devices import resolve_dtype

    if args.to != "original":
        folder_out(args.dst, f"a {args.to} model (--to original writes one file)")
    out = convert(args.src, args.dst, args.to, resolve_dtype(args.dtype))
    print(f"wrote {out}")


def add_data(sub) -> None:
    from ..data.emoji import ALL_SETS, IMAGE_SIZE, SOURCES, TEST_FRACTION

    p = sub.add_parser("data", help="build a dataset")
    which = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    emoji = which.add_parser("emoji", help="captioned emoji images from npm packages: Twemoji, Noto and seven "
                             "further sets", formatter_class=DefaultsFormatter)
    emoji.add_argument("--out", required=True, type=path_arg, help="the dataset folder to write (new or empty)")
    emoji.add_argument("--tarball", type=Path, nargs="+", default=None,
                       help="read these npm tarballs instead of fetching them with npm pack (the sets' packages at "
                            "their pinned versions, e.g. "
                            + " and ".join(f"{s.package}@{s.version}" for s in SOURCES)
                            + "; those not given are fetched)")
    emoji.add_argument("--download-dir", type=Path, default=None,
                       help="where npm pack puts the tarballs (default: ~/.cache/t2i/npm)")
    emoji.add_argument("--sets", nargs="+", choices=ALL_SETS, default=None, metavar="SET",
                       help=f"which drawings: {', '.join(ALL_SETS)} (default: all; twemoji noto is the dataset of "
                            "t2i 0.3)")
    emoji.add_argument("--size", type=positive(int, 1024), default=IMAGE_SIZE, help="image side in pixels")
    emoji.add_argument("--test-fraction", type=fraction, default=TEST_FRACTION,
                       help="share of (style, emoji) pairs held out")
    emoji.set_defaults(run=run_data_emoji)


def run_data_emoji(args) -> None:
    from ..data.emoji import build_emoji_dataset

    counts = build_emoji_dataset(args.out, args.tarball, args.size, args.test_fraction, args.download_dir,
                                 sets=args.sets)
    print(f"wrote {args.out}: {counts['train']} training and {counts['test']} held-out images (the comparison set), "
          f"{counts['test-extra']} more held out in test-extra/")
