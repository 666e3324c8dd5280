"""t2i: text-to-image diffusion, written from the DDPM maths up."""

from .errors import UserError

__version__ = "0.4.0.dev0"  # 0.3.0 and the changelog's unreleased changes
__all__ = ["Pipeline", "UserError", "__version__"]


def __getattr__(name: str):
    # `from t2i import Pipeline` without making `import t2i` (and `t2i --help`) load torch
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 't2i' has no attribute {name!r}")
