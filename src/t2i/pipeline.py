"""Pipeline: prompt → tokens → context τ_θ(y) → guided sampler → (decoder →) image.

`Pipeline.load("emoji")` opens a model that ships inside the package (`emoji`, the default,
or `shapes`); any other name is the path of a model folder written by `t2i train`. Calling
the pipeline generates images:

    pipe = Pipeline.load("emoji")
    images = pipe("red heart", cfg=5.0, seed=1, num_images=4)

Image i of a call is drawn from its own generator seeded `seed + i`, so an image is the
same whatever the batch it was made in, and any one of them can be made again alone.

A latent model (one with a `vae`) samples z · scaling_factor and decodes it; editing
encodes the input image first. Pixel and latent models are called the same way.

A Stable Diffusion v1 checkpoint (an original single file or a diffusers folder) loads
the same way, `Pipeline.load("v1-5-pruned-emaonly.safetensors")`, into our own networks
(`t2i.convert.stable_diffusion`); its parts are `pipe.tokenizer`, `pipe.text_encoder`,
`pipe.unet`, `pipe.vae`, and an inpainting U-Net (9 input channels) is fed the mask and
the masked image's latents beside the noisy latents, as it was trained.
"""

from __future__ import annotations

import secrets
import warnings
from importlib import resources
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from .checkpoints import (diffusion_from_config, load_components, read_config, require_diffusion_model,
                          tokenizer_from_config)
from .devices import resolve_device
from .diffusion import Diffusion
from .errors import UserError
from .images import PNG_PARAMETERS_KEY, to_pil, to_tensor
from .text.clip import CLIPTextTransformer
from .text.tokenizer import Tokenizer
from .models.unet import UNet, UNetConfig
from .models.vae import AutoencoderKL
from .kernels.winograd import use_winograd
from .sampling import DEFAULT_STEPS, check_guidance_scale, get_sampler, sample, spacing_for
from .text.condition import text_condition

DEFAULT_MODEL = "emoji"
# What generation uses when neither the call nor the model's config ("inference") says otherwise.
INFERENCE_DEFAULTS = {"sampler": "ddim", "steps": 50, "spacing": None, "cfg": 5.0, "guidance_rescale": 0.0}


def shipped_models() -> dict[str, Path]:
    """Models inside the package, by name: the folders of `t2i/weights/`."""
    root = resources.files("t2i") / "weights"
    if not root.is_dir():
        return {}
    return {entry.name: Path(str(entry)) for entry in root.iterdir() if (entry / "config.json").is_file()}


def resolve_model(name_or_path: str | Path) -> Path:
    """The folder of a shipped model's name, or the given folder."""
    shipped = shipped_models()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    path = Path(name_or_path)
    if not path.exists():
        names = ", ".join(sorted(shipped)) or "none"
        raise UserError(f"no model {str(name_or_path)!r}: give a model folder or a shipped model ({names})")
    return path


def image_seeds(seed: int | Sequence[int] | None, count: int) -> list[int]:
    """The seed of each of `count` images: `seed + i`, a list given whole, or a random start."""
    if seed is None:
        seed = secrets.randbelow(2**31)
    if isinstance(seed, int):
        return [seed + i for i in range(count)]
    seeds = [int(s) for s in seed]
    if len(seeds) != count:
        raise UserError(f"got {len(seeds)} seeds for {count} images")
    return seeds


class Pipeline:
    """A diffusion model with what it needs to turn prompts into images.

    `text_encoder` and `tokenizer` are None for an unconditional model, which accepts only
    the empty prompt; `vae` is None for a pixel-space model. `image_size` is the side of
    the images made (not of the latents). `inference` holds the model's own defaults
    (sampler, steps, spacing, cfg, guidance_rescale), which override `INFERENCE_DEFAULTS`. `clip`
    clips x̂₀ to [-1, 1] while sampling; it defaults to on for pixels, off for latents.
    """

    def __init__(self, unet: UNet, diffusion: Diffusion, image_size: int,
                 text_encoder: CLIPTextTransformer | None = None, tokenizer: Tokenizer | None = None,
                 inference: dict | None = None, name: str = "", clip: bool | None = None,
                 vae: AutoencoderKL | None = None, timestep_convention: dict | None = None):
        """`timestep_convention` holds a model's `steps_offset` and `set_alpha_to_one` (see
        `sampling.sample`): SD v1's samplers start their grids at 1 and end at ᾱ_0."""
        if (text_encoder is None) != (tokenizer is None):
            raise ValueError("a text encoder needs a tokenizer, and a tokenizer a text encoder")
        self.unet, self.diffusion, self.image_size = unet, diffusion, image_size
        self.text_encoder, self.tokenizer, self.vae = text_encoder, tokenizer, vae
        self.defaults = {**INFERENCE_DEFAULTS, **(inference or {})}
        self.name, self.clip = name, vae is None if clip is None else clip
        self.timestep_convention = dict(timestep_convention or {})
        self.vae_tile: int | None = None  # see `optimize`

    @classmethod
    def load(cls, name_or_path: str | Path = DEFAULT_MODEL, device: str | torch.device = "auto",
             dtype: torch.dtype | None = None) -> "Pipeline":
        """A shipped model by name, one of our model folders, or a Stable Diffusion v1
        checkpoint (single file or diffusers folder; its weights cast to `dtype`, float32
        by default)."""
        from .convert.stable_diffusion import is_foreign, load_stable_diffusion

        folder = resolve_model(name_or_path)
        if is_foreign(folder):
            components, config, tokenizer = load_stable_diffusion(folder, dtype or torch.float32)
            components = {name: network.to(resolve_device(device)) for name, network in components.items()}
        else:
            config = read_config(folder)
            require_diffusion_model(config, folder)
            components = load_components(folder, resolve_device(device), config)
            tokenizer = tokenizer_from_config(folder, config)
            if dtype is not None:
                components = components.to(dtype)
        convention = {key: config["diffusion"][key] for key in ("steps_offset", "set_alpha_to_one")
                      if key in config["diffusion"]}
        return cls(components["unet"], diffusion_from_config(config), config["image_size"],
                   components["text_encoder"] if "text_encoder" in components else None,
                   tokenizer, config.get("inference"), str(name_or_path),
                   vae=components["vae"] if "vae" in components else None, timestep_convention=convention)

    def optimize(self, channels_last: bool = False, compile: bool = False, vae_tile: int | None = None,
                 winograd: bool = False) -> "Pipeline":
        """Inference options that keep the outputs (fp32 differences ~1e-5) and change speed or memory.
        `winograd` computes the U-Net's and decoder's 3×3 convolutions of ≥ 64 channels by
        Winograd's F(4×4, 3×3) (`t2i.models.winograd`: 4× fewer multiplications, and transformed
        filters that take 4× the memory of those convolutions' weights); on the CPU, in float32.
        `channels_last` stores the U-Net's and decoder's feature maps position-major (NHWC);
        `compile` hands the U-Net to `torch.compile` (inductor, weights frozen as constants),
        which pays minutes of compiling on the first call of every new shape. Measured on this
        project's AVX2 CPU (docs/benchmarks.md): neither of these two sped up SD v1's U-Net
        (channels_last was 5% slower), while compile ran the small shipped model ~1.5× faster;
        so both are off unless asked. `vae_tile` decodes latents larger than that many positions
        a side in overlapping tiles (`AutoencoderKL.decode_tiled`), which bounds the decoder's
        memory for large images (not bit-equal to a whole decode). Returns self."""
        self.vae_tile = vae_tile
        if winograd:
            use_winograd(self.unet)
            if self.vae is not None:
                use_winograd(self.vae)
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
            if self.vae is not None:
                self.vae.to(memory_format=torch.channels_last)
        if compile:
            self.unet = torch.compile(self.unet, options={"freezing": True})
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def latent_channels(self) -> int:
        """Channels of what is sampled: the autoencoder's latents, or the U-Net's input for pixels."""
        return self.vae.config.latent_channels if self.vae is not None else self.unet.config.in_channels

    @property
    def downsample_factor(self) -> int:
        """How much smaller than the image the U-Net's input is on each side (1 for pixels)."""
        return self.vae.config.downsample_factor if self.vae is not None else 1

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """What the U-Net denoises for images x in [-1, 1]: x itself, or the scaled
        posterior mean μ(x) · scaling_factor of a latent model."""
        if self.vae is None:
            return x
        dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(x.to(dtype)).mean.float() * self.vae.config.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from what the U-Net samples (the inverse of `encode_images`)."""
        if self.vae is None:
            return z
        dtype = next(self.vae.parameters()).dtype
        z = (z / self.vae.config.scaling_factor).to(dtype)
        x = self.vae.decode_tiled(z, self.vae_tile) if self.vae_tile else self.vae.decode(z)
        return x.float().clamp(-1, 1)

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The U-Net's condition for each prompt, {"context": τ_θ(y) [B, L, D]} (and "pooled"
        [B, D] if the U-Net takes it); {} for an unconditional model. An over-long prompt
        is cut to the encoder's length with a warning, unknown words get one too."""
        if self.text_encoder is None:
            if any(prompts):
                raise UserError(f"model {self.name!r} is unconditional: it takes no prompt (leave the prompt empty)")
            return {}
        length = self.text_encoder.config.max_length
        for prompt in dict.fromkeys(prompts):
            count = len(self.tokenizer.encode(prompt))
            if count > length:
                kept = self.tokenizer.decode(self.tokenizer(prompt, length, truncate=True)[0])
                warnings.warn(f"the prompt is {count} tokens and the text encoder reads {length}: "
                              f"it was cut to {kept!r}", stacklevel=3)
            unknown = self.tokenizer.unknown_words(prompt)
            if unknown:
                warnings.warn(f"model {self.name!r} never saw the words {', '.join(unknown)}: they are ignored",
                              stacklevel=3)
        ids = self.tokenizer(list(prompts), length, truncate=True).to(self.device)
        return text_condition(self.text_encoder, ids, self.unet.config)

    def encode_prompt(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """The context τ_θ(y) [B, L, D] the U-Net cross-attends to, for each prompt (as diffusers' `encode_prompt`)."""
        if self.text_encoder is None:
            raise UserError(f"model {self.name!r} is unconditional: it has no text encoder")
        return self.encode_prompts([prompts] if isinstance(prompts, str) else list(prompts))["context"]

    def denoiser(self, concat: torch.Tensor | None = None):
        """The U-Net as the samplers call it, `model(x_t, t, **cond)` in float32: inputs cast
        to the U-Net's dtype, and `concat` [B, C', h, w] (an inpainting U-Net's mask and
        masked-image latents) appended to x_t's channels, repeated for a guided 2B batch."""
        dtype = self.dtype

        def model(x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
            if concat is not None:
                x = torch.cat([x, concat.repeat(x.shape[0] // concat.shape[0], 1, 1, 1)], dim=1)
            cond = {k: v.to(dtype) if v.is_floating_point() else v for k, v in cond.items()}
            return self.unet(x.to(dtype), t, **cond).float()

        return model

    def inpainting_inputs(self, edit: dict, batch: int, size) -> torch.Tensor:
        """What an inpainting U-Net (in_channels = 2 · latents + 1) reads beside x_t: the mask
        at latent resolution (nearest, 1 = redraw) and the latents of the image with the
        masked region blanked (SD's inpainting training); without a mask, all is redrawn."""
        pixels, pixel_mask = edit.get("pixels"), edit.get("pixel_mask")
        h, w = (side // self.downsample_factor for side in size)
        if pixel_mask is None:
            pixel_mask = torch.ones(1, 1, *size, device=self.device)
            pixels = torch.zeros(1, 3, *size, device=self.device)
        masked = self.encode_images(pixels * (pixel_mask < 0.5))
        mask = F.interpolate(pixel_mask, size=(h, w))
        return torch.cat([mask, masked], dim=1).expand(batch, -1, -1, -1)

    def check_size(self, width: int, height: int, what: str, fix: str) -> None:
        """Refuse sides that the autoencoder and the U-Net's levels cannot halve down evenly,
        naming the nearest sides that they can."""
        factor = self.unet.config.downsample_factor * self.downsample_factor
        if width < 1 or height < 1 or width % factor or height % factor:
            near = [max(factor, round(side / factor) * factor) for side in (width, height)]
            raise UserError(f"{what} is {width}×{height}; this model needs sides divisible by {factor}: "
                            f"{fix} ({near[0]}×{near[1]}, say)")

    def edit_inputs(self, image: Image.Image | None, mask: Image.Image | None, batch: int) -> dict:
        """`init` [B, C, h, w] (the image as the U-Net sees it) and `mask` [B, 1, h, w] in
        {0, 1}, as `sample` takes them, and the image and mask in pixels for `paste_known`.

        A latent cell is regenerated if any pixel it covers is masked (max-pooling the mask),
        so that the whole masked region is redrawn."""
        if image is None:
            if mask is not None:
                raise UserError("a mask needs the image it masks: give --image too")
            return {}
        self.check_size(image.width, image.height, "the image", "resize or crop it")
        pixels = to_tensor(image.convert("RGB"))[None].to(self.device)
        edit = {"init": self.encode_images(pixels).expand(batch, -1, -1, -1), "pixels": pixels}
        if mask is not None:
            if mask.size != image.size:
                raise UserError(f"the mask is {mask.width}×{mask.height} and the image {image.width}×{image.height}: "
                                "they must be the same size")
            m = (to_tensor(mask.convert("L").convert("RGB"))[:1] > 0).float()[None].to(self.device)
            edit["pixel_mask"] = m
            edit["mask"] = F.max_pool2d(m, self.downsample_factor).expand(batch, -1, -1, -1)
        return edit

    def settings(self, **overrides) -> dict:
        """The settings a call will use: its own arguments, else the model's, else the global defaults.
        A call that names another sampler than the model's gets that sampler's usual steps and
        spacing where it names none. The spacing returned is the one that runs (`spacing_for`)."""
        chosen = {key: self.defaults[key] if value is None else value for key, value in overrides.items()}
        sampler = overrides.get("sampler") or self.defaults["sampler"]
        if sampler != self.defaults["sampler"]:
            if "steps" in overrides and overrides["steps"] is None:
                chosen["steps"] = DEFAULT_STEPS.get(sampler, chosen["steps"])
            if "spacing" in overrides and overrides["spacing"] is None:
                chosen["spacing"] = None
        if "spacing" in chosen:
            chosen["spacing"] = spacing_for(sampler, chosen["spacing"])
        return chosen

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str] = "", negative_prompt: str | None = None,
                 steps: int | None = None, sampler: str | None = None, cfg: float | None = None,
                 seed: int | Sequence[int] | None = None, num_images: int = 1, guidance_rescale: float | None = None,
                 eta: float | None = None, progress: bool = True, image: Image.Image | None = None,
                 strength: float | None = None, mask: Image.Image | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "pil", spacing: str | None = None, width: int | None = None,
                 height: int | None = None) -> list[Image.Image] | torch.Tensor:
        """`num_images` images of each prompt, as PIL images; each carries its generation
        parameters in `image.info["t2i"]` (what `save_png` writes into the file). With
        `output_type="tensor"` the images are returned as one float tensor [B, 3, H, W] in
        [-1, 1] instead. `latents` [B, C, h, w] replaces the starting noise x_T drawn from
        the seeds (when editing: the noise that q(x_t | x_0) adds to the image). `width` and
        `height` default to the size the model was trained at (`image_size`).

        `cfg` is the guidance scale s (1 turns guidance off); `negative_prompt` replaces
        the empty prompt as the unconditional branch. Image i is drawn with seed `seed + i`;
        `seed` may also list one seed per image, or be None for a random one. `sampler` is
        any of `sampling.SAMPLERS`, on its own grid `spacing` unless one is named ("karras": σ
        spaced as Karras et al. do, the "Karras" of other tools' sampler names).

        Editing: with an `image`, generation starts from it noised to the level `strength`
        selects (default 0.8; 1 ignores the image, 0 returns it). With a `mask` as well
        (white = regenerate, black = keep; default strength 1) only the white region is
        redrawn; a latent model's output is the input outside the mask, pixel for pixel
        (the decoder would otherwise blur the kept region by its round-trip error). Images
        keep their own size, which must be divisible by the model's downsampling factor.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images)]
        settings = self.settings(sampler=sampler, steps=steps, spacing=spacing, cfg=cfg,
                                 guidance_rescale=guidance_rescale)
        get_sampler(settings["sampler"])
        check_guidance_scale(settings["cfg"])
        if num_images < 1:
            raise UserError(f"num_images must be at least 1, got {num_images}")
        seeds = image_seeds(seed, len(prompts))
        generators = [torch.Generator().manual_seed(s) for s in seeds]

        cond, uncond = self.encode_prompts(prompts), None
        if cond and settings["cfg"] != 1:
            uncond = self.encode_prompts([negative_prompt or ""] * len(prompts))
        edit = self.edit_inputs(image, mask, len(prompts))
        pixels, pixel_mask = edit.pop("pixels", None), edit.pop("pixel_mask", None)
        if strength is None:
            strength = 1.0 if mask is not None else 0.8
        if edit:
            settings["strength"] = strength
        if edit:
            size = tuple(pixels.shape[-2:])
            if (size[0] if height is None else height, size[1] if width is None else width) != size:
                raise UserError(f"an edited image keeps its size, {size[1]}×{size[0]}: leave out width and height")
        elif latents is not None and width is None and height is None:  # given latents set the size, as in diffusers
            size = tuple(side * self.downsample_factor for side in latents.shape[-2:])
        else:
            size = (self.image_size if height is None else height, self.image_size if width is None else width)
            self.check_size(size[1], size[0], "the size asked for", "choose such sides")
        latent_size = [side // self.downsample_factor for side in size]
        shape = (len(prompts), self.latent_channels, *latent_size)
        if output_type not in ("pil", "tensor"):
            raise UserError(f"output_type must be 'pil' or 'tensor', not {output_type!r}")
        if latents is not None and tuple(latents.shape) != shape:
            raise UserError(f"latents of shape {tuple(latents.shape)} given where {shape} are sampled")
        concat = None
        if self.vae is not None and self.unet.config.in_channels == 2 * self.latent_channels + 1:
            concat = self.inpainting_inputs({"pixels": pixels, "pixel_mask": pixel_mask}, len(prompts), size)
            edit.pop("mask", None)  # the U-Net sees the mask itself; nothing is replaced
            if image is None or strength >= 1:
                edit.pop("init", None)
        x_T = None if latents is None else latents.to(self.device, torch.float32)
        z = sample(self.denoiser(concat), self.diffusion, shape, settings["sampler"], settings["steps"], eta,
                   generators, progress=progress, spacing=settings["spacing"], clip=self.clip, device=self.device,
                   guidance_scale=settings["cfg"], uncond=uncond, guidance_rescale=settings["guidance_rescale"],
                   strength=strength, x_T=x_T, **self.timestep_convention, **edit, **cond)
        x = self.decode(z)
        if pixel_mask is not None and self.vae is not None:
            x = torch.lerp(pixels, x, pixel_mask)
        if output_type == "tensor":
            return x
        images = []
        for text, image_seed, pixels in zip(prompts, seeds, x):
            pil = to_pil(pixels)
            pil.info[PNG_PARAMETERS_KEY] = {"prompt": text, "negative_prompt": negative_prompt or "",
                                            "seed": image_seed, "size": list(size), "model": self.name, "eta": eta,
                                            **settings}
            images.append(pil)
        return images
