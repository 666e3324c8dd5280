"""Pipeline: prompt → condition τ_θ(y) → guided sampler → (decoder →) images.

`Pipeline.load("emoji")` opens a model that ships inside the package (`emoji`, the default,
or `shapes`), a model folder written by `t2i train`, or a Stable Diffusion v1/2.x checkpoint
(single file or diffusers folder, loaded into our own networks by `t2i.convert`). Calling
the pipeline generates images:

    pipe = Pipeline.load("emoji")
    images = pipe("red heart", cfg=5.0, seed=1, num_images=4)

A call is a short sequence of stages: `settings` → `condition` (prompts to the U-Net's
keyword arguments, and the guidance) → `edit_inputs` (img2img, inpainting) → `sampling.sample`
→ `decode` → `output`. Image i is drawn from its own generator seeded `seed + i`, so an image
is the same whatever the batch it was made in. Pixel and latent models are called alike.
"""

from __future__ import annotations

import dataclasses
import warnings
from functools import partial
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from .additions import Additions
from .checkpoints import (diffusion_from_config, load_components, lora_base, read_config, require_diffusion_model,
                          resolve_model, student_folder, student_folders, timestep_convention, tokenizer_from_config)
from .checks import whole_number
from .devices import channels_last_pays, default_dtype, resolve_device, resolve_dtype
from .diffusion import Diffusion
from .editing import EditImage, Editing
from .errors import UserError
from .folder_config import LORA_FILE
from .guards import (as_image, check_finite_output, check_generation_fits, image_seeds, image_side, negative_prompts,
                     prompt_list)
from .images import PNG_PARAMETERS_KEY, to_pil
from .kernels.winograd import use_winograd
from .models.config import check_divisible
from .models.unet import UNet
from .models.vae import AutoencoderKL
from .sampling import (Guidance, SamplerSettings, StepCallback, check_guidance, check_strength, get_sampler,
                       sample)
from .text.clip import CLIPTextTransformer
from .text.clip_bpe import CLIPTokenizer
from .text.condition import text_condition
from .text.emphasis import emphasised_context, same_length
from .text.tokenizer import Tokenizer

DEFAULT_MODEL = "emoji"
# What generation uses when neither the call nor the model's config ("inference") says otherwise.
INFERENCE_DEFAULTS = {"sampler": "ddim", "steps": 50, "spacing": None, "cfg": 5.0, "guidance_rescale": 0.0}
# What a call returns, as diffusers names it: PIL images, [B, H, W, 3] numpy or [B, 3, H, W]
# torch in [0, 1], or what the U-Net sampled (the scaled latents; the images in [-1, 1] for pixels).
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class Pipeline(Additions, Editing):
    """A diffusion model with what it needs to turn prompts into images.

    `text_encoder` and `tokenizer` are None for an unconditional model, which accepts only
    the empty prompt; `vae` is None for a pixel-space model. `image_size` is the side of
    the images made (not of the latents). `inference` holds the model's own defaults
    (sampler, steps, spacing, cfg, guidance_rescale), which override `INFERENCE_DEFAULTS`. `clip`
    clips x̂₀ to [-1, 1] while sampling; it defaults to on for pixels, off for latents.
    `timestep_convention` holds a model's `steps_offset` and `set_alpha_to_one`
    (`sampling.SamplerSettings`): SD v1's grids start at 1 and its DDIM ends at ᾱ_0.
    `folded_guidance` is the guidance scale a distilled student has in its network
    (`training.distill`): it then takes cfg 1 only. LoRAs and embedding words are `additions.Additions`',
    the image and mask of an edit `editing.Editing`'s.
    """

    def __init__(self, unet: UNet, diffusion: Diffusion, image_size: int,
                 text_encoder: CLIPTextTransformer | None = None, tokenizer: Tokenizer | None = None,
                 inference: dict | None = None, name: str = "", clip: bool | None = None,
                 vae: AutoencoderKL | None = None, timestep_convention: dict | None = None,
                 folded_guidance: float | None = None):
        if (text_encoder is None) != (tokenizer is None):
            raise ValueError("a text encoder needs a tokenizer, and a tokenizer a text encoder")
        self.unet, self.diffusion, self.image_size = unet, diffusion, image_size
        self.text_encoder, self.tokenizer, self.vae = text_encoder, tokenizer, vae
        self.defaults = {**INFERENCE_DEFAULTS, **(inference or {})}
        self.name, self.clip = name, vae is None if clip is None else clip
        self.timestep_convention = dict(timestep_convention or {})
        self.folded_guidance = folded_guidance
        self.vae_tile: int | None = None  # see `optimize`
        self.emphasis = True  # CLIP models read prompts in AUTOMATIC1111's syntax (`text.emphasis`); False: as written
        self.students: dict[int, Path] = {}  # distilled students by steps (`student`); `load` finds a folder's
        self._loaded_students: dict[int, Pipeline] = {}

    @classmethod
    def load(cls, name_or_path: str | Path = DEFAULT_MODEL, device: str | torch.device = "auto",
             dtype: torch.dtype | str | None = None, loras: Sequence = (),
             embeddings: Sequence = ()) -> "Pipeline":
        """A shipped model by name, one of our model folders, or a Stable Diffusion v1 or 2
        checkpoint (single file or diffusers folder); a LoRA's run folder loads as its base with the
        LoRA applied. The networks compute in `dtype` ("fp32", "bf16", "fp16" or a torch dtype); by
        default in bfloat16 for large networks on a device where it is native, float32 otherwise
        (`devices.default_dtype`). `loras` lists LoRA files to apply (`load_lora`), each a path or
        (path, scale); `embeddings` textual-inversion files (`load_embedding`), each a path or (path, word)."""
        from .convert.stable_diffusion import is_foreign, load_stable_diffusion

        device, dtype = resolve_device(device), resolve_dtype(dtype)
        folder = resolve_model(name_or_path)
        if is_foreign(folder):
            components, config, tokenizer = load_stable_diffusion(folder)  # as stored: one copy in memory
            components = torch.nn.ModuleDict(components)
        else:
            config = read_config(folder)
            if "lora" in config:  # a LoRA's run folder (`t2i train --init BASE --lora-rank R`): BASE, the LoRA applied
                return cls.load(lora_base(folder, config), device, dtype, [folder / LORA_FILE, *loras], embeddings)
            require_diffusion_model(config, folder)
            components = load_components(folder, device, config)
            tokenizer = tokenizer_from_config(folder, config)
        dtype = dtype or default_dtype(components["unet"], device)
        components = components.to(device, dtype)
        convention = timestep_convention(config)
        pipe = cls(components["unet"], diffusion_from_config(config), config["image_size"],
                   components["text_encoder"] if "text_encoder" in components else None,
                   tokenizer, config.get("inference"), str(name_or_path),
                   vae=components["vae"] if "vae" in components else None, timestep_convention=convention,
                   folded_guidance=config.get("distillation", {}).get("guidance_scale"))
        pipe.students = {} if is_foreign(folder) else student_folders(folder)
        pipe.optimize(channels_last=channels_last_pays(device, dtype))
        return pipe.load_additions(loras, embeddings)

    def student(self, steps: int | None, sampler: str | None = None, cfg: float | None = None,
                spacing: str | None = None, negative_prompt=None, guidance_rescale: float | None = None,
                eta: float | None = None, sampler_options: dict | None = None) -> "Pipeline | None":
        """The distilled student of `steps` steps that this model folder holds (students/steps-N/, `training.distill`),
        for a call that asks for that many steps and leaves sampler (its noise, its options), guidance (a negative
        prompt, a rescale) and grid to the model, its cfg left out or the one folded into the student (a form that
        shows the default cfg sends it): the student draws in N network calls what its teacher draws in ~20 guided
        ones. None otherwise, and with LoRAs applied (the student was not made with them). It shares this
        pipeline's text encoder, tokenizer and autoencoder as they are at each call, so embeddings and `load_vae`
        carry over."""
        if steps not in self.students or self.additions() or eta not in (None, 0) or sampler_options or \
                (sampler, spacing, negative_prompt or None, guidance_rescale) != (None,) * 4:
            return None
        if steps not in self._loaded_students:
            student = Pipeline.load(self.students[steps], self.device, self.dtype)
            student.name = str(student_folder(Path(self.name), steps))  # a name that loads it, shipped ones too
            self._loaded_students[steps] = student
        student = self._loaded_students[steps]
        if cfg not in (None, student.folded_guidance):
            return None
        student.text_encoder, student.tokenizer, student.vae = self.text_encoder, self.tokenizer, self.vae
        student.vae_tile = self.vae_tile
        return student

    def load_vae(self, path: str | Path) -> None:
        """Decode and encode with another autoencoder: an SD VAE file or diffusers vae/ folder
        (`convert.stable_diffusion.load_vae_file`), in this model's dtype. Its latents must have the
        model's channels and downsampling; the model's latent scaling factor is kept, since the U-Net
        was trained on latents of that scale."""
        from .convert.stable_diffusion import load_vae_file

        if self.vae is None:
            raise UserError(f"model {self.name!r} works on pixels: it has no autoencoder to replace")
        vae = load_vae_file(path, self.dtype)
        ours, theirs = self.vae.config, vae.config
        if (theirs.latent_channels, theirs.downsample_factor) != (ours.latent_channels, ours.downsample_factor):
            raise UserError(f"{str(path)!r} makes {theirs.latent_channels}-channel latents at 1/"
                            f"{theirs.downsample_factor} scale; model {self.name!r} takes {ours.latent_channels}-"
                            f"channel latents at 1/{ours.downsample_factor}")
        vae.config = dataclasses.replace(theirs, scaling_factor=ours.scaling_factor)
        self.vae = vae.to(self.device)

    def optimize(self, channels_last: bool = False, compile: bool = False, vae_tile: int | None = None,
                 winograd: bool = False) -> "Pipeline":
        """Inference options that keep the outputs (fp32 differences ~1e-5) and change speed or memory
        (docs/benchmarks.md measures each): `winograd` computes 3×3 convolutions of ≥ 64 channels by
        Winograd's F(4×4, 3×3) (CPU, float32); `channels_last` stores feature maps NHWC; `compile`
        hands the U-Net to `torch.compile` (minutes for every new shape); `vae_tile` decodes latents
        larger than that many positions a side in overlapping tiles (bounded memory, not bit-equal to
        a whole decode; left as it was when not given, 0 turns it off). Returns self."""
        if vae_tile is not None:
            self.vae_tile = vae_tile or None
        if winograd:
            if self.device.type != "cpu" or self.dtype != torch.float32:  # its kernel's only case: no silent no-op
                raise UserError(f"Winograd convolutions compute in float32 on the CPU, and model {self.name!r} "
                                f"runs in {str(self.dtype).removeprefix('torch.')} on {self.device.type}: load it "
                                "in float32 on the CPU (--precision fp32) or leave Winograd out")
            use_winograd(self.unet)
            self.loras.reattach()  # the LoRA hooks were on the convolutions just replaced
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

    @property
    def inpainting_unet(self) -> bool:  # SD's 9 channels: x_t, the mask, the masked image's latents
        return self.vae is not None and self.unet.config.in_channels == 2 * self.latent_channels + 1

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """What the U-Net denoises for images x in [-1, 1]: x itself, or the scaled
        posterior mean μ(x) · scaling_factor of a latent model."""
        if self.vae is None:
            return x
        dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(x.to(dtype)).mean.float() * self.vae.config.scaling_factor

    def decode(self, z: torch.Tensor, edit: EditImage | None = None) -> torch.Tensor:
        """Images in [-1, 1] from what the U-Net samples (the inverse of `encode_images`). When
        inpainting a latent model, the kept region is the input's own pixels, since the decoder
        would otherwise blur it by its round-trip error."""
        if self.vae is None:
            return z
        dtype = next(self.vae.parameters()).dtype
        z = (z / self.vae.config.scaling_factor).to(dtype)
        x = self.vae.decode_tiled(z, self.vae_tile) if self.vae_tile else self.vae.decode(z)
        x = x.float().clamp(-1, 1)
        return x if edit is None or edit.mask is None else torch.lerp(edit.pixels, x, edit.mask)

    def encode_prompts(self, prompts: Sequence[str], clip_skip: int = 1) -> dict[str, torch.Tensor]:
        """The U-Net's condition for each prompt, {"context": τ_θ(y) [B, L, D]} (and "pooled"
        [B, D] if the U-Net takes it); {} for an unconditional model. A CLIP model reads AUTOMATIC1111's
        emphasis, and a prompt past 75 tokens in chunks of 75 (`text.emphasis`; L = 77 a chunk); other
        models cut an over-long prompt to the encoder's length with a warning; unknown words get one too."""
        if self.text_encoder is None:
            if any(prompts):
                raise UserError(f"model {self.name!r} is unconditional: it takes no prompt (leave the prompt empty)")
            return {}
        encode = partial(self.text_encoder, clip_skip=clip_skip) if clip_skip > 1 else None
        if self.reads_emphasis:
            context = emphasised_context(encode or self.text_encoder, self.tokenizer, prompts, self.device)
            if context is not None:
                return {"context": context}
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
        return text_condition(self.text_encoder, ids, self.unet.config, encode)

    @property
    def reads_emphasis(self) -> bool:
        """Whether prompts are read in AUTOMATIC1111's syntax: `emphasis` on, a CLIP tokenizer, and a U-Net that
        takes the context alone (no pooled embedding or padding mask, which a chunked context has not)."""
        unet = self.unet.config
        return (self.emphasis and isinstance(self.tokenizer, CLIPTokenizer) and unet.pooled_dim is None
                and not unet.mask_context_padding)

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

    # -- the stages of a call ------------------------------------------------------------------
    def settings(self, **overrides) -> dict:
        """The settings a call will use: its own arguments, else the model's, else the global defaults.
        A call that names another sampler than the model's gets that sampler's usual steps and
        spacing where it names none. The spacing returned is the one that runs. Checked here,
        before any network runs."""
        chosen = {key: self.defaults[key] if value is None else value for key, value in overrides.items()}
        sampler = get_sampler(overrides.get("sampler") or self.defaults["sampler"])
        if overrides.get("sampler") not in (None, self.defaults["sampler"]):
            if "steps" in overrides and overrides["steps"] is None:
                chosen["steps"] = sampler.default_steps or self.diffusion.num_timesteps
            if "spacing" in overrides and overrides["spacing"] is None:
                chosen["spacing"] = None
        if "spacing" in chosen:
            chosen["spacing"] = chosen["spacing"] or sampler.spacing
        if "cfg" in chosen:
            check_guidance(chosen["cfg"], chosen.get("guidance_rescale", 0.0))
            if self.folded_guidance is not None and chosen["cfg"] != 1:
                # its network has no unconditional branch to guide against: it learned only the guided one
                raise UserError(f"model {self.name!r} is distilled with guidance {self.folded_guidance:g} in its "
                                "network: it takes cfg 1 only (leave cfg out)")
        return chosen

    def sampler_settings(self, settings: dict, eta: float | None, options: dict | None) -> SamplerSettings:
        """The `SamplerSettings` of a call's settings, with the model's clipping and timestep convention."""
        options = {**(options or {}), **({} if eta is None else {"eta": eta})}
        return SamplerSettings(settings["sampler"], settings["steps"], settings["spacing"], options, self.clip,
                               **self.timestep_convention)

    def check_size(self, width: int, height: int, what: str, fix: str) -> None:
        """Refuse sides that the autoencoder and the U-Net's levels cannot halve down evenly."""
        factor = self.unet.config.downsample_factor * self.downsample_factor
        check_divisible(width, height, factor, what, "this model needs", fix)

    def output_size(self, width: int | None, height: int | None, edit: EditImage | None,
                    latents: torch.Tensor | None) -> tuple[int, int]:
        """(H, W) of the images: an edited image's own, given latents' (as in diffusers), else the
        size asked for, else the size the model was trained at."""
        if edit is not None:
            if (edit.size[0] if height is None else height, edit.size[1] if width is None else width) != edit.size:
                raise UserError(f"an edited image keeps its size, {edit.size[1]}×{edit.size[0]}: "
                                "leave out width and height")
            return edit.size
        if latents is not None and width is None and height is None:
            return tuple(side * self.downsample_factor for side in latents.shape[-2:])
        size = (self.image_size if height is None else height, self.image_size if width is None else width)
        self.check_size(size[1], size[0], "the size asked for", "choose such sides")
        return size

    def check_clip_skip(self, clip_skip: int | None) -> int:
        """A clip skip of 1 (off) to the CLIP text encoder's depth; None is 1."""
        if clip_skip is None or clip_skip == 1:
            return 1
        if not isinstance(self.text_encoder, CLIPTextTransformer):
            raise UserError(f"model {self.name!r} has no CLIP text encoder: clip skip does not apply to it")
        c = self.text_encoder.config
        return whole_number("clip skip", clip_skip, 1, c.layers - c.skip_layers)

    def condition(self, prompts: list[str], negatives: list[str] | None, cfg: float,
                  rescale: float, clip_skip: int = 1) -> tuple[dict[str, torch.Tensor], Guidance | None]:
        """The U-Net's condition of each prompt, and the guidance against its negative (or the empty)
        prompt; no guidance for an unconditional model or at cfg 1."""
        if negatives is not None and self.text_encoder is None:
            raise UserError(f"model {self.name!r} is unconditional: it takes no negative prompt")
        if negatives is not None and any(negatives) and self.folded_guidance is not None:
            raise UserError(f"model {self.name!r} is distilled with guidance against the empty prompt in its network: "
                            "it takes no negative prompt (its teacher does)")
        cond = self.encode_prompts(prompts, clip_skip)
        if not cond or cfg == 1:
            return cond, None
        uncond = self.encode_prompts(negatives or [""] * len(prompts), clip_skip)
        if uncond["context"].shape[1] != cond["context"].shape[1]:  # a prompt or its negative took more chunks
            empty = self.encode_prompts([""], clip_skip)["context"]
            cond["context"], uncond["context"] = same_length(cond["context"], uncond["context"], empty)
        return cond, Guidance(uncond, cfg, rescale)

    def previewing(self, callback: StepCallback, edit: EditImage | None) -> StepCallback:
        """`callback` given x̂_0 as a decoded PIL image (the batch's first) rather than what the U-Net samples."""
        def decoded(x0) -> list[Image.Image] | None:
            z = x0()  # the first image's alone: a preview shows one, and a decode costs a few U-Net steps
            return None if z is None else [to_pil(x) for x in self.decode(z[:1], edit)]

        return lambda i, steps, x0: callback(i, steps, lambda: decoded(x0))

    @staticmethod
    def output(x: torch.Tensor, output_type: str, parameters: list[dict]):
        """Images x in [-1, 1] as `output_type` asks; each PIL image carries its generation parameters
        in `image.info["t2i"]` (what `images.save_png` writes into the file)."""
        if output_type in ("pt", "np"):
            x = ((x + 1) / 2).clamp(0, 1)
            return x if output_type == "pt" else x.permute(0, 2, 3, 1).cpu().numpy()
        images = [to_pil(pixels) for pixels in x]
        for image, info in zip(images, parameters):
            image.info[PNG_PARAMETERS_KEY] = info
        return images

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str] = "", negative_prompt: str | Sequence[str] | None = None,
                 steps: int | None = None, sampler: str | None = None, cfg: float | None = None,
                 seed: int | Sequence[int] | None = None, num_images: int = 1, guidance_rescale: float | None = None,
                 eta: float | None = None, progress: bool | StepCallback = True, image: Image.Image | None = None,
                 strength: float | None = None, mask: Image.Image | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "pil", spacing: str | None = None, width: int | None = None,
                 height: int | None = None, sampler_options: dict | None = None, clip_skip: int | None = None):
        """`num_images` images of each prompt, as `output_type` says (`OUTPUT_TYPES`; PIL images by
        default). `latents` [B, C, h, w] replaces the starting noise x_T drawn from the seeds (when
        editing: the noise that q(x_t | x_0) adds to the image). `width` and `height` default to the
        size the model was trained at (`image_size`).

        `cfg` is the guidance scale s (1 turns guidance off); `negative_prompt` (one, or one per
        prompt) replaces the empty prompt as the unconditional branch. Image i is drawn with seed
        `seed + i`; `seed` may also list one seed per image, or be None for a random one. `sampler`
        is any of `samplers.SAMPLERS`, on its own grid `spacing` unless one is named ("karras": σ
        spaced as Karras et al. do, the "Karras" of other tools' sampler names); `eta` and
        `sampler_options` are the sampler's own options.

        Editing: with an `image` (a PIL image or a file's path), generation starts from it noised to
        the level `strength` selects (default 0.8; 1 ignores the image, 0 returns it). With a `mask`
        as well (white = regenerate, black = keep; default strength 1) only the white region is
        redrawn. Images keep their own size, which must be divisible by the model's downsampling
        factor. Every argument is checked before any network runs (`t2i.guards`).

        `progress` shows a progress bar, or is a `sampling.StepCallback` called before each step,
        whose x̂_0 here is decoded: a list of one PIL image, what the sampler currently predicts for the
        first image (a preview).
        `clip_skip` N > 1 conditions on a CLIP text encoder's state N - 1 blocks before its last
        (AUTOMATIC1111's "Clip skip").

        A model with a distilled student of `steps` steps (`student`) hands it a call that names no sampler,
        eta, sampler options, negative prompt, rescale or spacing, no cfg but the student's own, and applies no
        LoRA; the images' parameters then name the student as their model.
        """
        arguments = dict(locals())  # first, before any other local: this call's arguments, for a student
        student = self.student(steps, sampler, cfg, spacing, negative_prompt, guidance_rescale, eta, sampler_options)
        if student is not None:
            return student(**{name: value for name, value in arguments.items() if name not in ("self", "cfg")})
        settings = self.settings(sampler=sampler, steps=steps, spacing=spacing, cfg=cfg,
                                 guidance_rescale=guidance_rescale)
        sampling = self.sampler_settings(settings, eta, sampler_options)
        if output_type not in OUTPUT_TYPES:
            raise UserError(f"output_type must be one of {', '.join(map(repr, OUTPUT_TYPES))}, not {output_type!r}")
        prompts, num_images = prompt_list("prompt", prompt), whole_number("num_images", num_images, 1)
        negatives = negative_prompts(negative_prompt, len(prompts))
        image, mask = as_image("image", image), as_image("mask", mask)
        if strength is not None and image is None:
            raise UserError("strength is how far to noise an image to edit: pass the image too, or leave it out")
        edit = self.edit_image(image, mask)
        if edit is not None:
            settings["strength"] = strength = (1.0 if mask is not None else 0.8) if strength is None else strength
            check_strength(strength)
        size = self.output_size(image_side("width", width), image_side("height", height), edit, latents)
        count = len(prompts) * num_images
        check_generation_fits(self.unet.config, None if self.vae is None else self.vae.config, count, *size,
                              self.text_encoder is not None and settings["cfg"] != 1, self.device,
                              decoder_tiled=bool(self.vae_tile), dtype=self.dtype)
        prompts = [p for p in prompts for _ in range(num_images)]
        negatives = None if negatives is None else [n for n in negatives for _ in range(num_images)]
        seeds = image_seeds(seed, count)
        shape = (count, self.latent_channels, *(side // self.downsample_factor for side in size))
        if latents is not None and tuple(latents.shape) != shape:
            raise UserError(f"latents of shape {tuple(latents.shape)} given where {shape} are sampled")

        clip_skip = self.check_clip_skip(clip_skip)
        cond, guidance = self.condition(prompts, negatives, settings["cfg"], settings["guidance_rescale"], clip_skip)
        edit_inputs, concat = self.edit_inputs(edit, strength, count, size)
        z = sample(self.denoiser(concat), self.diffusion, shape, sampling, cond=cond, guidance=guidance,
                   edit=edit_inputs, generator=[torch.Generator().manual_seed(s) for s in seeds],
                   x_T=None if latents is None else latents.to(self.device, torch.float32), device=self.device,
                   progress=self.previewing(progress, edit) if callable(progress) else progress)
        check_finite_output(z, {"unet": self.unet, "text_encoder": self.text_encoder, "vae": self.vae}, self.name)
        if output_type == "latent":
            return z
        parameters = [{"prompt": text, "negative_prompt": negative, "seed": image_seed,
                       "size": list(size), "model": self.name, "eta": eta, **settings,
                       **({"clip_skip": clip_skip} if clip_skip > 1 else {}),
                       **({"sampler_options": dict(sampler_options)} if sampler_options else {}), **self.additions()}
                      for text, negative, image_seed in zip(prompts, negatives or [""] * count, seeds)]
        return self.output(self.decode(z, edit), output_type, parameters)
