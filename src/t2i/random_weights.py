"""Networks of Stable Diffusion v1's full size with random weights of a trained network's scale: what the
speed benchmarks time and the parity tests compare, the same tensors for ours and the peers' (diffusers,
OpenVINO), with no weights downloaded."""

from __future__ import annotations

from pathlib import Path

import torch


def randomize_as_trained(network: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights of std 1/sqrt(fan-in), norms' scales near 1 and small biases, in place: activations
    and outputs of a trained network's scale, for timing and comparing numerics without the weights."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in network.named_parameters():
            if p.ndim == 1:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator) if "norm" in name else
                        0.02 * torch.randn(p.shape, generator=generator))
            else:
                p.normal_(0, p[0].numel() ** -0.5, generator=generator)
    return network


def random_sd_v1_unet(seed: int = 0) -> torch.nn.Module:
    """diffusers' SD v1 U-Net (859.5M parameters) with `randomize_as_trained` weights."""
    import diffusers

    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(cross_attention_dim=768)
    return randomize_as_trained(unet.to_empty(device="cpu").eval(), seed)


def random_sd_v1_folder(folder: str | Path, seed: int = 0) -> Path:
    """A diffusers folder of SD v1's full size (U-Net, VAE, CLIP ViT-L/14 text encoder, our shipped CLIP
    tokenizer) with `randomize_as_trained` weights stored in float16, as SD v1.5 is downloaded."""
    from .convert.build import NETWORKS
    from .convert.stable_diffusion import SD_DIFFUSION, save_diffusers
    from .models.unet import UNetConfig
    from .models.vae import VAEConfig
    from .text.clip import TextEncoderConfig
    from .text.clip_bpe import CLIPTokenizer

    configs = {"unet": UNetConfig.sd_v1(), "vae": VAEConfig.sd_v1(), "text_encoder": TextEncoderConfig.sd_v1()}
    networks = {}
    for i, (name, config) in enumerate(configs.items()):
        with torch.device("meta"):
            network = NETWORKS[name](config)
        networks[name] = randomize_as_trained(network.to_empty(device="cpu"), seed + i).half()
    return save_diffusers(networks, CLIPTokenizer.shipped(), SD_DIFFUSION, 512, folder)


def ours_from(theirs: torch.nn.Module) -> torch.nn.Module:
    """Our SD v1 U-Net built on the tensors of diffusers' `theirs` (no copy)."""
    from .convert.build import build
    from .convert.unet_names import foreign_names
    from .models.unet import UNetConfig

    view = type("View", (dict,), {"shape": lambda self, k: tuple(self[k].shape),
                                  "get_as": lambda self, k, dtype: self[k]})(theirs.state_dict())
    config = UNetConfig.sd_v1()
    return build("unet", config, view, foreign_names(config, "diffusers"), None, "mismatch").eval()
