"""Evaluations, one kind a module, each returning a small report whose `str` is what `t2i eval`
prints: bits/dim (`nll`), autoencoder PSNR (`reconstruction`), prompt following (`prompts`),
and FID, KID and text alignment on a held-out split (`quality`, over `t2i.metrics`)."""

from .nll import NLLResult, nll_on_dataset
from .prompts import PromptComparison, PromptReport, compare_cfgs, prompt_accuracy
from .quality import SampleQualityReport, SampleQualityRow, cached_features, files_digest, sample_quality
from .reconstruction import ReconstructionResult, autoencoder_psnr, psnr, reconstruction_psnr

__all__ = ["NLLResult", "PromptComparison", "PromptReport", "ReconstructionResult", "SampleQualityReport",
           "SampleQualityRow", "autoencoder_psnr", "cached_features", "compare_cfgs", "files_digest",
           "nll_on_dataset", "prompt_accuracy", "psnr", "reconstruction_psnr", "sample_quality"]
