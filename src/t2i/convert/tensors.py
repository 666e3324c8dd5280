"""Foreign weight files, read one tensor at a time.

`open_weights(path)` gives a `Weights`: the keys and shapes of a `.safetensors` file, or
of a pickled `.ckpt`/`.bin` opened with `torch.load(weights_only=True)`, whose unpickler
builds tensors, dicts and numbers only and refuses anything else before running it. A
tensor is read when asked for and cast then, so a network built from the file holds
each weight once, in the dtype asked for, and never the whole file beside it.
`StateDictWeights` gives tensors already in memory the same interface.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple

import torch
from safetensors import SafetensorError, safe_open

from ..errors import UserError

SAFETENSORS = (".safetensors",)
PICKLES = (".ckpt", ".bin", ".pt", ".pth")


class Weights(Mapping[str, torch.Tensor]):
    """A read-only mapping key -> tensor over one file (`path`, None for tensors in memory);
    `shape(key)` without reading the tensor."""

    def __init__(self, path: Path | None):
        self.path = path

    def shape(self, key: str) -> tuple[int, ...]:
        raise NotImplementedError

    def get_as(self, key: str, dtype: torch.dtype | None) -> torch.Tensor:
        """The tensor `key`, floating point cast to `dtype` (None: as stored)."""
        value = self[key]
        return value.to(dtype) if dtype is not None and value.is_floating_point() else value

    def metadata(self) -> dict[str, str]:
        """The file's own text fields (a safetensors header's `__metadata__`); {} where there are none."""
        return {}


class SafetensorsWeights(Weights):
    def __init__(self, path: Path):
        super().__init__(path)
        try:
            self.file = safe_open(str(path), "pt")
            self.keys_ = list(self.file.keys())
            self.key_set = set(self.keys_)
        except (SafetensorError, OSError) as error:
            raise UserError(f"{str(path)!r} is not a readable safetensors file (truncated or damaged?): "
                            f"{str(error).splitlines()[0]}") from None

    def __contains__(self, key) -> bool:
        return key in self.key_set

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.key_set:
            raise KeyError(key)
        try:
            return self.file.get_tensor(key)
        except (SafetensorError, OSError) as error:
            raise UserError(f"{str(self.path)!r}: cannot read {key} ({error}): is the file truncated?") from None

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.file.get_slice(key).get_shape())

    def metadata(self) -> dict[str, str]:
        return dict(self.file.metadata() or {})

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_)

    def __len__(self) -> int:
        return len(self.keys_)


class StateDictWeights(Weights):
    """Tensors already in memory (a network's state dict, a loaded pickle) as `Weights`."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], path: Path | None = None):
        super().__init__(path)
        self.tensors = dict(tensors)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)


class Inert:
    """Stands in for a class that well-known checkpoints pickle beside their weights (a training callback's
    settings): made without running any of the real class's code, its state kept as it is, never used."""

    def __setstate__(self, state) -> None:
        self.__dict__["state"] = state


# what AUTOMATIC1111's safe unpickler lets through besides plain data: SD 1.x's own checkpoints (sd-v1-4.ckpt)
# pickle PyTorch Lightning's ModelCheckpoint callback; the original textual-inversion code saves a ParameterDict
KNOWN_GLOBALS = [(Inert, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"), torch.nn.ParameterDict]


def load_pickle(path: Path):
    """What a torch.save file holds, read with `weights_only=True`: tensors, dicts, lists, strings and
    numbers only (and `KNOWN_GLOBALS`); a pickle that names anything else (which may run code) is refused
    before it runs."""
    try:
        with torch.serialization.safe_globals(KNOWN_GLOBALS):
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error):  # not a pickle at all, rather than one refused
            raise UserError(f"{str(path)!r} is not a PyTorch checkpoint (truncated, damaged, or another kind of "
                            "file)") from None
        culprit = next(line for line in str(error).splitlines() if "Unsupported global" in line)
        raise UserError(f"{str(path)!r} holds pickled objects other than tensors, which may run code: "
                        "refused without running it (only plain state dicts load); "
                        f"{culprit.strip()[:160]}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise UserError(f"{str(path)!r} is not a readable checkpoint (truncated or damaged?): "
                        f"{str(error).splitlines()[0][:160]}") from None


class PickledWeights(StateDictWeights):
    """A torch.save file. Zip files (torch ≥ 1.6) are memory-mapped, so tensors are paged
    in when read; SD's checkpoints keep their weights under "state_dict"."""

    def __init__(self, path: Path):
        loaded = load_pickle(path)
        if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
            loaded = loaded["state_dict"]
        if not isinstance(loaded, dict):
            raise UserError(f"{str(path)!r} holds a {type(loaded).__name__}, not a dict of weights")
        super().__init__({k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}, path)


def open_weights(path: str | Path) -> Weights:
    """The weights of a `.safetensors`, `.ckpt`, `.bin`, `.pt` or `.pth` file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{str(path)!r} does not exist")
    if path.suffix in SAFETENSORS:
        return SafetensorsWeights(path)
    if path.suffix in PICKLES:
        return PickledWeights(path)
    raise UserError(f"{str(path)!r}: unknown weights format; give a .safetensors or a .ckpt file")


class Chunk(NamedTuple):
    """Part `index` of `count` equal parts along the first axis of tensor `key`: one of Q, K
    and V in a fused in-projection (OpenCLIP's `in_proj_weight`)."""

    key: str
    index: int
    count: int


class Renamed(Mapping[str, torch.Tensor]):
    """A view of `weights` under new names: {new name: key in `weights`, or a `Chunk` of one}."""

    def __init__(self, weights: Weights | Renamed, names: Mapping[str, str | Chunk]):
        self.weights, self.names = weights, names

    def __contains__(self, key) -> bool:
        return key in self.names

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.get_as(key, None)

    def shape(self, key: str) -> tuple[int, ...]:
        source = self.names[key]
        if isinstance(source, Chunk):
            first, *rest = self.weights.shape(source.key)
            return (first // source.count, *rest)
        return self.weights.shape(source)

    def get_as(self, key: str, dtype: torch.dtype | None) -> torch.Tensor:
        source = self.names[key]
        if isinstance(source, Chunk):
            return self.weights.get_as(source.key, dtype).chunk(source.count)[source.index].clone()
        return self.weights.get_as(source, dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def under(weights: Weights | Renamed, prefix: str) -> Renamed:
    """The weights whose keys start with `prefix`, named without it."""
    return Renamed(weights, {key[len(prefix):]: key for key in weights if key.startswith(prefix)})
