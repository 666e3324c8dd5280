"""`t2i train` and `t2i train-vae`: the options of a run, passed to `t2i.training`; a resume passes only those given."""

from __future__ import annotations

import os

from .common import (DefaultsFormatter, name_or_path, non_negative, note_given, path_arg, positive, resume_changes,
                     seed_arg)


def add_batch_options(p, t) -> None:
    p.add_argument("--batch-size", type=positive(int), default=t.batch_size,
                   help="examples per step, however many processes share them (torchrun)")
    p.add_argument("--micro-batch-size", type=positive(int), default=None,
                   help="examples a process computes at once; its share of the batch is accumulated in micro-batches "
                        "(default: the whole share, batch size / processes)")


def report(result) -> None:
    """The run's outcome, printed once: by torchrun's rank 0, or by the one process."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(result)


def add_train(sub) -> None:
    from ..models.unet import BLOCK_TYPES, UNetConfig
    from ..training.diffusion import MIXED_PRECISION, TrainConfig
    from ..training.distill import DistillConfig
    from ..training.finetune import FinetuneConfig

    p = sub.add_parser("train", help="train a diffusion model on a folder of images or on 'shapes'",
                       formatter_class=DefaultsFormatter)
    note_given(p)
    t, u = TrainConfig(), UNetConfig()
    p.add_argument("--data", default=t.data, type=name_or_path,
                   help="'shapes' (one object an image), 'shapes2' (one or two) or a folder of images")
    p.add_argument("--out", required=True, type=path_arg, help="run folder (model, checkpoints, loss, samples)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, with its own settings but for those "
                        "given that a resumed run may change (--max-steps, --lr, --cooldown-steps, --balance-by, "
                        "--mixed-precision, --device, --workers, a run from scratch's --data, and a fine-tuning's "
                        "--gradient-checkpointing); a distillation's --max-steps may not pass its last round's end")
    p.add_argument("--image-size", type=positive(int), default=t.image_size)
    add_batch_options(p, t)
    p.add_argument("--max-steps", type=positive(int), default=t.max_steps)
    p.add_argument("--lr", type=positive(float), default=t.lr, help="learning rate after warm-up")
    p.add_argument("--warmup-steps", type=non_negative, default=t.warmup_steps)
    p.add_argument("--cooldown-steps", type=non_negative, default=t.cooldown_steps,
                   help="the learning rate falls linearly to zero over the run's last this many steps")
    p.add_argument("--weight-decay", type=float, default=t.weight_decay)
    p.add_argument("--grad-clip", type=float, default=t.grad_clip, help="max gradient norm; 0 turns clipping off")
    p.add_argument("--ema-decay", type=float, default=t.ema_decay)
    p.add_argument("--schedule", default=t.schedule,
                   help="linear, scaled_linear, cosine, linear_alpha or rectified_flow")
    p.add_argument("--timesteps", type=positive(int), default=t.num_timesteps, help="T, the number of diffusion steps")
    p.add_argument("--prediction", default=t.prediction_type,
                   help="what the network predicts: epsilon, v, or flow (the velocity ε - x_0, trained at "
                        "logit-normal timesteps; best with --schedule rectified_flow)")
    p.add_argument("--min-snr-gamma", type=float, default=None, help="Min-SNR-γ loss weighting (e.g. 5)")
    p.add_argument("--balance-by", default=None, metavar="FIELD",
                   help="draw every value of this metadata.jsonl field equally often (e.g. emoji: one emoji's "
                        "skin tones share one emoji's draws)")
    p.add_argument("--save-every", type=positive(int), default=t.save_every)
    p.add_argument("--sample-every", type=positive(int), default=t.sample_every)
    p.add_argument("--keep-every", type=positive(int), default=None,
                   help="also keep the model of every this many steps in snapshots/ (to evaluate it later)")
    p.add_argument("--probe-every", type=int, default=t.probe_every,
                   help="log the loss of fixed training and held-out examples every this many steps (0: never)")
    p.add_argument("--seed", type=seed_arg, default=t.seed)
    p.add_argument("--workers", type=int, default=t.num_workers, help="data loader processes")
    p.add_argument("--device", default=t.device, help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION, default=t.mixed_precision,
                   help="bf16: the U-Net's matmuls and convolutions in bfloat16, weights and optimizer in float32 "
                        "(faster on GPUs and on CPUs with AVX512-BF16 or AMX); fp16: in float16 with a loss scale "
                        "(GPUs without bfloat16)")
    p.add_argument("--channels", type=positive(int), default=u.model_channels, help="width of the first level")
    p.add_argument("--channel-mult", type=positive(int), nargs="+", default=list(u.channel_mult),
                   help="width multiplier of each level")
    p.add_argument("--num-res-blocks", type=positive(int), default=u.num_res_blocks)
    p.add_argument("--attention-levels", type=int, nargs="*", default=None,
                   help="levels (0 = full resolution) with self-attention; default: the lowest resolution")
    p.add_argument("--block", choices=BLOCK_TYPES, default=u.block_type)
    p.add_argument("--dropout", type=float, default=u.dropout)
    p.add_argument("--norm-groups", type=positive(int), default=u.norm_groups, help="GroupNorm groups (at most)")
    p.add_argument("--scale-shift-norm", action="store_true",
                   help="the embedding scales and shifts each ResBlock's second norm (ADM's AdaGN)")
    p.add_argument("--coord-channels", action="store_true",
                   help="give the U-Net each pixel's x and y as two more input channels (CoordConv)")
    p.add_argument("--vae", default=None, type=name_or_path,
                   help="an autoencoder folder (from `t2i train-vae`): train latent diffusion on its latents")
    text = p.add_argument_group("text to image", "with --text, the U-Net attends to a text encoder trained with it")
    text.add_argument("--text", action="store_true", help="train on the captions too (shapes, or .txt beside images, "
                      "or a metadata.jsonl)")
    text.add_argument("--text-encoder", choices=("clip", "minilm"), default="clip",
                      help="clip: a small CLIP-style encoder trained with the U-Net; minilm: all-MiniLM-L6-v2, "
                      "pretrained and frozen (implies --text)")
    text.add_argument("--p-uncond", type=float, default=t.p_uncond,
                      help="probability of dropping a caption, for classifier-free guidance")
    text.add_argument("--text-width", type=positive(int), default=128)
    text.add_argument("--text-pooling", choices=("eos", "mean"), default="mean",
                      help="the pooled text embedding: the end token's state (CLIP) or the mean of the tokens'")
    text.add_argument("--text-init-std", type=positive(float), default=1.0,
                      help="initial spread of the token embeddings (CLIP's is 0.02)")
    text.add_argument("--text-layers", type=positive(int), default=4)
    text.add_argument("--text-heads", type=positive(int), default=4)
    text.add_argument("--text-length", type=positive(int), default=32, help="most tokens a caption can have")
    text.add_argument("--no-pooled", dest="pooled", action="store_false",
                      help="do not add the pooled text embedding to the timestep embedding")
    text.add_argument("--mask-padding", action="store_true",
                      help="keep cross-attention off the padding after each caption's end token")
    f = FinetuneConfig(init="-")
    tune = p.add_argument_group(
        "fine-tuning Stable Diffusion", "with --init, a Stable Diffusion v1/2.x model is trained further on "
        f"--data's captions: its own architecture, schedule, text encoder and image size (--image-size may change "
        f"it); the options left out take fine-tuning's defaults (batch {f.batch_size}, lr {f.lr:g}, "
        f"{f.max_steps} steps, warm-up {f.warmup_steps}, a save and samples every {f.save_every})")
    tune.add_argument("--init", type=path_arg, default=None, metavar="MODEL",
                      help="the model to fine-tune: an SD .safetensors/.ckpt file, a diffusers folder, or a t2i "
                           "folder of one; the whole U-Net is trained unless --lora-rank is given")
    tune.add_argument("--lora-rank", type=positive(int), default=None, metavar="R",
                      help="train LoRA adapters of rank R on the attention projections instead (the run folder "
                           "then holds lora.safetensors and pytorch_lora_weights.safetensors)")
    tune.add_argument("--lora-alpha", type=positive(float), default=None, metavar="A",
                      help="the LoRA's α: its update is (α/R)·B·A (default: R)")
    tune.add_argument("--lora-text-encoder", action="store_true",
                      help="adapt the text encoder's attention projections too")
    tune.add_argument("--gradient-checkpointing", action="store_true",
                      help="recompute the U-Net's feature maps in the backward pass: far less memory, about a third "
                           "more time, the same gradients")
    d = DistillConfig(teacher="-")
    distil = p.add_argument_group(
        "progressive distillation", "with --distill, one of our text-to-image models teaches students of fewer and "
        "fewer DDIM steps on --data's captions (Salimans & Ho 2022), its classifier-free guidance folded in: each "
        "round halves the steps, each student is kept in --out's students/steps-N/ and generates with cfg 1; the "
        f"options left out take distillation's defaults (batch {d.batch_size}, lr {d.lr:g}, warm-up "
        f"{d.warmup_steps} a round, a save and samples every {d.save_every})")
    distil.add_argument("--distill", type=path_arg, default=None, metavar="TEACHER",
                        help="the model to distil: a latent text-to-image model folder of ours, or a shipped model")
    distil.add_argument("--distill-start-steps", type=positive(int), default=d.start_steps, metavar="N",
                        help="the first student's steps (its teacher takes 2N)")
    distil.add_argument("--distill-final-steps", type=positive(int), default=d.final_steps, metavar="M",
                        help="the last student's steps; N must be M times a power of two")
    distil.add_argument("--distill-steps-per-round", type=positive(int), default=d.steps_per_round, metavar="K",
                        help="training steps of each round (the run takes them all unless --max-steps stops it)")
    distil.add_argument("--distill-cfg", type=float, default=None, metavar="W",
                        help="the guidance scale folded into the students (default: the teacher's own cfg)")
    p.set_defaults(run=run_train, option_names={action.dest: action.option_strings[0] for action in p._actions
                                                if action.option_strings})


# the options of a run from scratch, which a fine-tuning takes from its model instead
ARCHITECTURE = ("schedule", "timesteps", "prediction", "channels", "channel_mult", "num_res_blocks",
                "attention_levels", "block", "dropout", "norm_groups", "scale_shift_norm", "coord_channels", "vae",
                "text", "text_encoder", "text_width", "text_pooling", "text_init_std", "text_layers", "text_heads",
                "text_length", "pooled", "mask_padding")
# what sets the text encoder up: nothing without --text (MiniLM, frozen, brings its own)
TEXT_OPTIONS = ("text_encoder", "p_uncond", "text_width", "text_pooling", "text_init_std", "text_layers", "text_heads",
                "text_length", "pooled", "mask_padding")
FINETUNING = ("lora_rank", "lora_alpha", "lora_text_encoder", "gradient_checkpointing")
# a distillation's own options, and those of a diffusion run it has no use for (its image size is the teacher's)
DISTILLING = ("distill_start_steps", "distill_final_steps", "distill_steps_per_round", "distill_cfg")
NOT_DISTILLING = ("image_size", "p_uncond", "min_snr_gamma", "keep_every", "probe_every")
NAMES = {"timesteps": "num_timesteps", "prediction": "prediction_type", "workers": "num_workers",
         "distill_start_steps": "start_steps", "distill_final_steps": "final_steps",
         "distill_steps_per_round": "steps_per_round", "distill_cfg": "cfg"}


def run_train(args) -> None:
    from ..errors import UserError
    from ..text.bert import BertConfig
    from ..text.clip import TextEncoderConfig
    from ..models.unet import UNetConfig
    from ..training.diffusion import TrainConfig, resume, train
    from ..training import distill, finetune

    def options(dests) -> str:
        return ", ".join(args.option_names[dest] for dest in dests)

    if args.resume:
        continued = (finetune.resume if finetune.is_finetuning_run(args.out) else
                     distill.resume if distill.is_distillation_run(args.out) else resume)
        report(continued(args.out, **resume_changes(args, NAMES)))
        return
    def started_from(dest: str, not_applying, what: str, why: str, does: str) -> dict:
        """The settings of a run that starts from a model (--init, --distill): the options that do not apply
        to it refused, --data required."""
        option = args.option_names[dest]
        refused = [name for name in not_applying if name in args.given]
        if refused:
            raise UserError(f"{options(refused)} do not apply to {what} ({option}): {why}")
        if "data" not in args.given:
            raise UserError(f"{option} {does} a model on your captioned images: give their folder with --data")
        return {NAMES.get(name, name): getattr(args, name) for name in args.given - {"out", dest}}

    if args.distill is not None:
        if args.init is not None:
            raise UserError("--init fine-tunes a model and --distill distils one: give one of them")
        settings = started_from("distill", (*ARCHITECTURE, *FINETUNING, *NOT_DISTILLING), "distillation",
                                "the students are the teacher's networks at its image size, trained on its steps",
                                "distils")
        report(distill.distill(distill.DistillConfig(teacher=str(args.distill), **settings), args.out))
        return
    given = [dest for dest in DISTILLING if dest in args.given]
    if given:
        raise UserError(f"{options(given)} set a distillation: give its teacher with --distill TEACHER")
    if args.init is not None:
        settings = started_from("init", ARCHITECTURE, "fine-tuning",
                                "the model's architecture, schedule and text encoder are its own", "fine-tunes")
        report(finetune.finetune(finetune.FinetuneConfig(init=str(args.init), **settings), args.out))
        return
    given = [dest for dest in FINETUNING if dest in args.given]
    if given:
        raise UserError(f"{options(given)} fine-tune a Stable Diffusion model: give it with --init MODEL")
    args.text = args.text or args.text_encoder == "minilm"
    given = [dest for dest in TEXT_OPTIONS if dest in args.given]
    if given and not args.text:
        raise UserError(f"{options(given)} set up the text encoder, which trains only with --text: add --text, or "
                        "leave them out for an unconditional model")
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
        micro_batch_size=args.micro_batch_size,
    )
    text = None
    if args.text_encoder == "minilm":
        text = BertConfig(max_length=args.text_length)
    elif args.text:
        text = TextEncoderConfig(max_length=args.text_length, width=args.text_width, layers=args.text_layers,
                                 heads=args.text_heads, intermediate_size=4 * args.text_width,
                                 pooling=args.text_pooling, token_init_std=args.text_init_std)
    report(train(unet, config, args.out, text_config=text))


def add_train_vae(sub) -> None:
    from ..models.vae import VAEConfig
    from ..training.autoencoder import RECONSTRUCTION_LOSSES, VAETrainConfig

    p = sub.add_parser("train-vae", help="train the autoencoder of a latent diffusion model",
                       formatter_class=DefaultsFormatter)
    note_given(p)
    t, v = VAETrainConfig(), VAEConfig()
    p.add_argument("--data", default=t.data, type=name_or_path, help="'shapes', 'shapes2' or a folder of images")
    p.add_argument("--out", required=True, type=path_arg, help="run folder (autoencoder, checkpoints, loss, samples)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, with its own settings but for those "
                        "given that a resumed run may change (--max-steps, --lr, --device, --workers)")
    p.add_argument("--image-size", type=positive(int), default=t.image_size)
    add_batch_options(p, t)
    p.add_argument("--max-steps", type=positive(int), default=t.max_steps)
    p.add_argument("--lr", type=positive(float), default=t.lr)
    p.add_argument("--channels", type=positive(int), nargs="+", default=list(v.block_channels),
                   help="width of each level; n levels make latents 2^(n-1) times smaller on each side")
    p.add_argument("--latent-channels", type=positive(int), default=v.latent_channels)
    p.add_argument("--num-res-blocks", type=positive(int), default=v.num_res_blocks)
    p.add_argument("--loss", choices=RECONSTRUCTION_LOSSES, default=t.reconstruction, help="reconstruction loss")
    p.add_argument("--kl-weight", type=float, default=t.kl_weight, help="β, the weight of KL(q(z|x) ‖ N(0, I))")
    p.add_argument("--disc-weight", type=float, default=t.disc_weight,
                   help="weight of the patch discriminator's adversarial loss; 0 turns it off")
    p.add_argument("--disc-start", type=int, default=t.disc_start, help="step at which the discriminator starts")
    p.add_argument("--save-every", type=positive(int), default=t.save_every)
    p.add_argument("--sample-every", type=positive(int), default=t.sample_every)
    p.add_argument("--seed", type=seed_arg, default=t.seed)
    p.add_argument("--workers", type=int, default=t.num_workers, help="data loader processes")
    p.add_argument("--device", default=t.device, help="auto, cpu, cuda, cuda:1, ...")
    p.set_defaults(run=run_train_vae)


def run_train_vae(args) -> None:
    from ..models.vae import VAEConfig
    from ..training.autoencoder import VAETrainConfig, resume_vae, train_vae

    if args.resume:
        report(resume_vae(args.out, **resume_changes(args, {"workers": "num_workers", "loss": "reconstruction"})))
        return
    vae = VAEConfig(block_channels=tuple(args.channels), latent_channels=args.latent_channels,
                    num_res_blocks=args.num_res_blocks)
    config = VAETrainConfig(
        data=args.data, image_size=args.image_size, batch_size=args.batch_size, max_steps=args.max_steps, lr=args.lr,
        reconstruction=args.loss, kl_weight=args.kl_weight, disc_weight=args.disc_weight, disc_start=args.disc_start,
        save_every=args.save_every, sample_every=args.sample_every, seed=args.seed, num_workers=args.workers,
        device=args.device, micro_batch_size=args.micro_batch_size,
    )
    report(train_vae(vae, config, args.out))
