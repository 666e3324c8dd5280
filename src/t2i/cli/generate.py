"""`t2i generate`, `t2i sample`, `t2i noise` and `t2i info`: prompts (or nothing) to images, the forward
process shown, and the parameters a generated image carries."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..errors import UserError
from .common import DefaultsFormatter, add_precision, path_arg, positive, seed_arg


def add_generate(sub) -> None:
    from ..pipeline import DEFAULT_MODEL, INFERENCE_DEFAULTS
    from ..samplers import SAMPLERS
    from ..schedules import SPACINGS

    defaults = ', '.join(f'{k} {v}' for k, v in INFERENCE_DEFAULTS.items() if v is not None)
    p = sub.add_parser("generate", help="generate images from a prompt",
                       description="Generate images from a prompt. Settings left out take the model's defaults "
                                   f"(else {defaults}).")
    p.add_argument("prompt", nargs="*", help="what to draw (several: one grid row each); none for an "
                   "unconditional sample")
    p.add_argument("--model", default=DEFAULT_MODEL, help="a shipped model's name, a model folder, or a Stable "
                   "Diffusion v1/2.x checkpoint (.safetensors/.ckpt file or diffusers folder); "
                   f"default: {DEFAULT_MODEL}")
    add_precision(p)
    p.add_argument("--negative", default=None, help="negative prompt: what to steer away from")
    p.add_argument("--cfg", type=listed_number, nargs="+", default=None,
                   help="guidance scale s (1 = no guidance); several: one grid row each")
    p.add_argument("--rescale", type=float, default=None, help="guidance rescale φ in [0, 1] (Lin et al. 2023)")
    p.add_argument("--steps", type=positive(int), default=None,
                   help="default: the model's; a model with a distilled student of that many steps (students/steps-N) "
                        "uses it unless --sampler, --eta, --option, --negative, --rescale, --spacing, --lora or "
                        "another --cfg than its own is given")
    p.add_argument("--sampler", nargs="+", default=None,
                   help=f"one of: {', '.join(SAMPLERS)}; several: one grid row each")
    p.add_argument("--spacing", choices=SPACINGS, default=None,
                   help="the sampler's grid; karras: σ spaced as Karras et al. (default: the sampler's own)")
    p.add_argument("--eta", type=float, default=None, help="DDIM and Euler-ancestral noise (0 = deterministic)")
    add_options(p)
    p.add_argument("--seed", type=int, default=None, help="image i uses seed + i; default: random")
    p.add_argument("--num", type=positive(int, 4096), default=1, help="number of images")
    p.add_argument("--width", type=int, default=None,
                   help="image width in pixels (default: the size the model was trained at)")
    p.add_argument("--height", type=int, default=None,
                   help="image height in pixels (default: the size the model was trained at)")
    p.add_argument("--image", type=Path, default=None, help="edit this image (img2img) instead of starting from noise")
    p.add_argument("--strength", type=listed_number, nargs="+", default=None,
                   help="how far to noise --image, 0..1 (default 0.8; 1 with --mask); several: one image each, "
                        "side by side after the input")
    p.add_argument("--mask", type=Path, default=None, help="inpaint: redraw the white region of --image")
    p.add_argument("--zoom", type=positive(int), default=1, help="enlarge the saved images N× (nearest pixel)")
    p.add_argument("--vae-tile", type=positive(int), default=None, metavar="N",
                   help="decode in overlapping tiles of N latents a side: bounded memory for large images")
    p.add_argument("--winograd", action="store_true",
                   help="3×3 convolutions by Winograd's F(4×4, 3×3): faster on the CPU for large models in float32 "
                        "(--precision fp32)")
    p.add_argument("--clip-skip", type=positive(int), default=None, metavar="N",
                   help="condition on the CLIP text encoder's state N-1 blocks before its last (AUTOMATIC1111's "
                        "Clip skip; 1 = off)")
    p.add_argument("--vae", type=Path, default=None, metavar="FILE",
                   help="an autoencoder to use instead of the model's: an SD VAE file (.safetensors, .ckpt, .pt) "
                        "or a diffusers vae/ folder")
    p.add_argument("--lora", type=lora_arg, action="append", default=[], metavar="FILE[:SCALE]",
                   help="apply a LoRA (kohya-ss/AUTOMATIC1111 or diffusers file) weighted by SCALE (default 1); "
                        "repeatable")
    p.add_argument("--embedding", type=embedding_arg, action="append", default=[], metavar="FILE[:WORD]",
                   help="a textual-inversion embedding: WORD (default: the file's name, or a diffusers file's own "
                        "word) in the prompt reads its vectors; repeatable")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=path_arg, default=Path("image.png"),
                   help="the image; for several, a grid, and each image as NAME-i.png")
    p.set_defaults(run=run_generate)


def split_suffix(text: str) -> tuple[str, str | None]:
    """FILE[:SUFFIX]: the text after the last colon is a suffix unless it looks like part of a path
    (C:\\models\\x.pt keeps its drive letter), or the whole text names a file."""
    path, colon, suffix = text.rpartition(":")
    if Path(text).exists() or not colon or not path or not suffix or any(sep in suffix for sep in "/\\"):
        return text, None
    return path, suffix


def existing_file(text: str) -> Path:
    path = path_arg(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text!r} does not exist")
    return path


def lora_arg(text: str) -> tuple[Path, float]:
    """An argparse type: a LoRA file and its scale, FILE or FILE:SCALE."""
    path, scale = split_suffix(text)
    try:
        value = 1.0 if scale is None else float(scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the scale in {text!r} is not a number: give FILE or FILE:SCALE, "
                                         "e.g. style.safetensors:0.7") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"the scale in {text!r} must be a finite number")
    return existing_file(path), value


# --cfg, --strength and --sampler take several values (one grid row each): a prompt typed after them is read as one
AFTER_A_LIST = "these options take several values, so a prompt after them is read as one: put the prompt first"


def listed_number(text: str) -> float:
    """An argparse type: one of several numbers; a word is most likely a prompt placed after the list."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number ({AFTER_A_LIST})") from None


def check_samplers(names: list[str] | None) -> None:
    """Refuse an unknown --sampler before any model loads; a prompt read as one is told so."""
    from ..samplers import get_sampler

    for name in names or []:
        try:
            get_sampler(name)
        except UserError as error:
            if " " not in name:
                raise
            raise UserError(f"{error} ({AFTER_A_LIST})") from None


def option_arg(text: str) -> tuple[str, object]:
    """An argparse type: a sampler's own option NAME=VALUE, the value a whole number, a real one or a name
    (`sampling.check_option` then checks it against the kind of the option's default)."""
    name, equals, value = text.partition("=")
    if not equals or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE: e.g. langevin_steps=4")
    for kind in (int, float):
        try:
            return name.strip(), kind(value)
        except ValueError:
            pass
    return name.strip(), value.strip()


def add_options(p) -> None:
    p.add_argument("--option", type=option_arg, action="append", default=[], metavar="NAME=VALUE",
                   help="a sampler's own option (repeatable): langevin_steps=4, step_size=0.5 (langevin); "
                        "corrector_steps=2, snr=0.1 (pc); order=3 (lms); variance=beta (ddpm); eta=0.5 (ddim)")


def embedding_arg(text: str) -> tuple[Path, str | None]:
    """An argparse type: an embedding file and the word that calls it, FILE or FILE:WORD."""
    path, word = split_suffix(text)
    return existing_file(path), word


def run_generate(args) -> None:
    """One image, or a comparison grid (`t2i.comparison`) and each of its images as NAME-i.png."""
    from ..comparison import compare
    from ..files import check_writable
    from ..checks import MAX_SIDE
    from ..images import enlarge, read_image
    from ..metadata import LORA_TAG
    from ..pipeline import Pipeline

    check_writable(args.out, "--out", ".png")
    check_samplers(args.sampler)
    tagged = [prompt for prompt in args.prompt or [] if LORA_TAG.search(prompt)]
    if tagged:
        raise UserError(f"{LORA_TAG.search(tagged[0]).group(0)!r} is AUTOMATIC1111's way to name a LoRA: here give "
                        "its file as --lora FILE[:SCALE] (t2i serve --lora-dir reads the tags)")
    image, mask = (None if path is None else read_image(path, mode) for path, mode in ((args.image, "RGB"),
                                                                                      (args.mask, "L")))
    pipe = Pipeline.load(args.model, args.device, args.dtype)
    pipe.load_additions(args.lora, args.embedding)
    if args.vae is not None:
        pipe.load_vae(args.vae)
    side = max(args.width or 0, args.height or 0, *(image.size if image else ()), pipe.image_size)
    if args.zoom > 1 and side * args.zoom > MAX_SIDE:
        raise UserError(f"--zoom {args.zoom} would save {side * args.zoom}-pixel sides, more than {MAX_SIDE}: "
                        "choose a smaller zoom")
    pipe.optimize(vae_tile=args.vae_tile, winograd=args.winograd)
    lists = [args.prompt or [""], args.sampler or [None], args.cfg or [None], args.strength or [None]]
    several = args.num * math.prod(map(len, lists)) > 1
    saved = []

    def row_done(row: int, images: list) -> None:
        """A grid's images are saved as each row ends, so that a stop (Ctrl+C) loses only the row it was in."""
        if several:
            save_all([(enlarge(im, args.zoom), numbered(args.out, row * args.num + i), im.info["t2i"])
                      for i, im in enumerate(images)])
            saved.extend(images)

    try:
        comparison = compare(pipe, *lists, seed=args.seed, num_images=args.num, image=image, mask=mask,
                             negative_prompt=args.negative, steps=args.steps, guidance_rescale=args.rescale,
                             eta=args.eta, spacing=args.spacing, width=args.width, height=args.height,
                             clip_skip=args.clip_skip, sampler_options=dict(args.option) or None, row_done=row_done)
    except KeyboardInterrupt:
        if saved:
            print(f"t2i: kept the {len(saved)} images of the rows that ended: {numbered(args.out, 0).name}.."
                  f"{numbered(args.out, len(saved) - 1).name} (no grid)", file=sys.stderr)
        raise
    images = comparison.images
    if not several:
        save_all([(enlarge(images[0], args.zoom), args.out, images[0].info["t2i"])])
        print(f"wrote {args.out} (seed {images[0].info['t2i']['seed']})")
        return
    save_all([(comparison.grid(args.zoom), args.out, None)])
    count, seeds = len(comparison.rows), comparison.seeds
    print(f"wrote {args.out} and {args.out.stem}-0..{len(images) - 1}{args.out.suffix} "
          f"({count} combination{'s' * (count > 1)} × seeds {seeds[0]}..{seeds[-1]})")


def numbered(out: Path, i: int) -> Path:
    """A grid's image `i` beside it: NAME-i.png."""
    return out.with_name(f"{out.stem}-{i}{out.suffix}")


def save_all(pngs: list[tuple]) -> None:
    """Save (image, path, parameters) as PNGs; if the place fails now (a full disk), save them in a new
    temporary folder instead and say where, so that nothing generated is lost."""
    import tempfile

    from ..images import save_png

    try:
        for image, path, parameters in pngs:
            save_png(image, path, parameters)
    except OSError as error:
        rescue = Path(tempfile.mkdtemp(prefix="t2i-rescued-"))
        for image, path, parameters in pngs:
            save_png(image, rescue / Path(path).name, parameters)
        raise UserError(f"could not write {str(path)!r} ({error.strerror or error}): the images are saved in "
                        f"{rescue} instead") from None


def add_sample(sub) -> None:
    from ..diffusion import VARIANCES
    from ..samplers import SAMPLERS
    from ..schedules import SPACINGS

    p = sub.add_parser("sample", help="a grid of unconditional samples from a model (the empty prompt)",
                       formatter_class=DefaultsFormatter)
    p.add_argument("--model", required=True, help="a model folder written by `t2i train`, or a shipped model")
    p.add_argument("--sampler", default="ddpm", help=f"one of: {', '.join(SAMPLERS)}")
    p.add_argument("--steps", type=positive(int), default=None, help="default: the sampler's own (T for ddpm)")
    p.add_argument("--eta", type=float, default=None, help="DDIM noise (0 = deterministic)")
    p.add_argument("--variance", choices=VARIANCES, default=None, help="DDPM σ_t²: β_t or β̃_t (default β̃_t)")
    add_options(p)
    p.add_argument("--spacing", choices=SPACINGS, default=None, help="the sampler's grid (default: its own)")
    p.add_argument("--no-clip", dest="clip", action="store_false", default=None,
                   help="do not clip the predicted x_0 to [-1, 1] at each step (models of pixels clip by default, "
                        "latent models never)")
    p.add_argument("--num", type=positive(int, 4096), default=16, help="number of images")
    p.add_argument("--batch-size", type=positive(int, 4096), default=64)
    p.add_argument("--seed", type=seed_arg, default=0, help="image i uses seed + i")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=path_arg, default=Path("samples.png"))
    p.set_defaults(run=run_sample)


def run_sample(args) -> None:
    """`t2i generate ''` as a near-square grid in batches: the same path, the same images."""
    from ..files import check_writable
    from ..images import make_grid
    from ..pipeline import Pipeline

    check_writable(args.out, "--out", ".png")
    pipe = Pipeline.load(args.model, args.device)
    if args.clip is False:
        pipe.clip = False
    options = {**dict(args.option), **({"variance": args.variance} if args.variance else {})} or None
    images = [image for start in range(0, args.num, args.batch_size)
              for image in pipe("", steps=args.steps, sampler=args.sampler, seed=args.seed + start, eta=args.eta,
                                num_images=min(args.batch_size, args.num - start), spacing=args.spacing,
                                sampler_options=options)]
    save_all([(make_grid(images), args.out, {**images[0].info["t2i"], "clip": pipe.clip, "num": args.num})])
    print(f"wrote {args.out}")


def add_noise(sub) -> None:
    p = sub.add_parser("noise", help="show an image along the forward process q(x_t | x_0)",
                       formatter_class=DefaultsFormatter)
    p.add_argument("image", type=Path)
    p.add_argument("--out", type=path_arg, default=Path("forward.png"))
    p.add_argument("--schedule", default="linear")
    p.add_argument("--timesteps", type=positive(int, 100_000), default=1000)
    p.add_argument("--size", type=positive(int, 4096), default=128,
                   help="the image is resized and centre-cropped to this")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.set_defaults(run=run_noise)


def run_noise(args) -> None:
    from ..data.folder import resize_center_crop
    from ..diffusion import Diffusion
    from ..files import check_writable
    from ..images import read_image, save_png, to_tensor
    from ..visualize import forward_process_figure

    check_writable(args.out, "--out", ".png")
    diffusion = Diffusion.from_schedule(args.schedule, args.timesteps)
    x0 = to_tensor(resize_center_crop(read_image(args.image), args.size))
    figure, stats = forward_process_figure(x0, diffusion, seed=args.seed)
    save_png(figure, args.out, {"image": str(args.image), "schedule": args.schedule, "seed": args.seed})
    print(f"wrote {args.out}; pixels at t = {args.timesteps - 1}: mean {stats['mean']:.4f}, std {stats['std']:.4f} "
          "(N(0, 1) has 0 and 1)")


def add_info(sub) -> None:
    p = sub.add_parser("info", help="the generation parameters a PNG carries (ours or AUTOMATIC1111's)")
    p.add_argument("image", type=Path)
    p.add_argument("--json", action="store_true", help="print them as our JSON instead of AUTOMATIC1111's text")
    p.set_defaults(run=run_info)


def run_info(args) -> None:
    """The image's infotext as AUTOMATIC1111's PNG-info tab shows it (its own, word for word, where it has one),
    or our JSON of its parameters."""
    import json

    from ..images import INFOTEXT_KEY, image_parameters, read_image
    from ..metadata import to_infotext

    image = read_image(args.image)
    parameters = image_parameters(image)
    if not parameters:
        raise UserError(f"{str(args.image)!r} carries no generation parameters (neither t2i's nor AUTOMATIC1111's)")
    infotext = None if args.json else image.info.get(INFOTEXT_KEY) or to_infotext(parameters)
    print(infotext if infotext is not None else json.dumps(parameters, indent=2, sort_keys=True))
