"""What a call edits: an image to redraw in part (img2img, Meng et al. 2022) or inside a mask (inpainting).

`Editing` is a part of `pipeline.Pipeline`: it reads the host's `device`, `check_size`, `encode_images`,
`downsample_factor` and `inpainting_unet`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from .errors import UserError
from .images import eight_bit, to_tensor
from .sampling import Edit


@dataclass(frozen=True)
class EditImage:
    """The image a call edits, in pixels ([1, 3, H, W] in [-1, 1]), and its mask ([1, 1, H, W],
    1 = redraw) or None."""

    pixels: torch.Tensor
    mask: torch.Tensor | None = None

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.pixels.shape[-2:])


class Editing:
    """The image and mask of a call as tensors, and what the sampler and the U-Net read of them."""

    def edit_image(self, image: Image.Image | None, mask: Image.Image | None) -> EditImage | None:
        """The image and mask to edit as tensors, checked: sides the model can take, a mask of the
        image's size (white = redraw, black = keep)."""
        if image is None:
            if mask is not None:
                raise UserError("a mask needs the image it masks: pass the image too")
            return None
        self.check_size(image.width, image.height, "the image", "resize or crop it")
        pixels = to_tensor(eight_bit(image).convert("RGB"))[None].to(self.device)
        if mask is None:
            return EditImage(pixels)
        if mask.size != image.size:
            raise UserError(f"the mask is {mask.width}×{mask.height} and the image {image.width}×{image.height}: "
                            "they must be the same size")
        mask = (to_tensor(eight_bit(mask).convert("L").convert("RGB"))[:1] > 0).float()
        return EditImage(pixels, mask[None].to(self.device))

    def edit_inputs(self, edit: EditImage | None, strength: float, batch: int,
                    size: tuple[int, int]) -> tuple[Edit | None, torch.Tensor | None]:
        """What the sampler edits, and what an inpainting U-Net reads beside x_t.

        For other U-Nets a latent cell is regenerated if any pixel it covers is masked
        (max-pooling the mask), so that the whole masked region is redrawn. An inpainting
        U-Net sees the mask itself, so nothing is replaced, and at strength 1 it starts from noise."""
        concat = self.inpainting_inputs(edit, batch, size) if self.inpainting_unet else None
        if edit is None or (concat is not None and strength >= 1):
            return None, concat
        init = self.encode_images(edit.pixels).expand(batch, -1, -1, -1)
        mask = None
        if edit.mask is not None and concat is None:
            mask = F.max_pool2d(edit.mask, self.downsample_factor).expand(batch, -1, -1, -1)
        return Edit(init, strength, mask), concat

    def inpainting_inputs(self, edit: EditImage | None, batch: int, size: tuple[int, int]) -> torch.Tensor:
        """What an inpainting U-Net (in_channels = 2 · latents + 1) reads beside x_t: the mask
        at latent resolution (nearest, 1 = redraw) and the latents of the image with the
        masked region blanked (SD's inpainting training); without a mask, all is redrawn."""
        if edit is None or edit.mask is None:
            edit = EditImage(torch.zeros(1, 3, *size, device=self.device), torch.ones(1, 1, *size, device=self.device))
        masked = self.encode_images(edit.pixels * (edit.mask < 0.5))
        mask = F.interpolate(edit.mask, size=tuple(side // self.downsample_factor for side in size))
        return torch.cat([mask, masked], dim=1).expand(batch, -1, -1, -1)
