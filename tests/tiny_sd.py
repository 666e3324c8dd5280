"""A tiny random Stable Diffusion v1 pipeline of diffusers and transformers, saved as a diffusers folder:
the peer that tests/test_lora.py and tests/test_embeddings.py compare with (SD v1's layout: cross-attention
on all levels but the last, 8 heads, 32 GroupNorm groups, CLIP with quick GELU)."""

import os

import torch

from t2i.text.clip_bpe import CLIPTokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                    steps_offset=1, set_alpha_to_one=False, clip_sample=False)


def randomize(module, seed):
    """Weights away from the zero and identity inits that hide naming mistakes."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return module.eval()


def tiny_sd_folder(folder, sd2: bool = False, prediction: str = "epsilon"):
    """Save a tiny random `StableDiffusionPipeline` into `folder`/pipe; return that folder. `sd2`: SD 2.x's
    layout instead (linear proj_in/proj_out, heads of width 64 — here 1 and 2 heads —, GELU in CLIP, padding
    with "!"); `prediction` its scheduler's ("epsilon" or "v_prediction"). CLIP's heads are 64 wide, the rule
    an original file's text encoder is read by."""
    import diffusers
    import transformers

    CLIPTokenizer.shipped().save(folder / "vocab")
    torch.manual_seed(0)
    layout = dict(block_out_channels=(64, 128), attention_head_dim=(1, 2), use_linear_projection=True) if sd2 else \
        dict(block_out_channels=(32, 64), attention_head_dim=8)
    unet = randomize(diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=32, cross_attention_dim=64,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        **layout), 1)
    vae = randomize(diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32,
        sample_size=16, scaling_factor=0.18215), 2)
    text_encoder = randomize(transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
        max_position_embeddings=77, hidden_act="gelu" if sd2 else "quick_gelu", eos_token_id=2, bos_token_id=0,
        pad_token_id=1)), 3)
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab" / "vocab.json"), str(folder / "vocab" / "merges.txt"),
                                           model_max_length=77, **({"pad_token": "!"} if sd2 else {}))
    scheduler = diffusers.DDIMScheduler(**SD_SCHEDULER, prediction_type=prediction)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                             scheduler=scheduler, safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder / "pipe")
    return folder / "pipe"


def load_reference(folder):
    """The diffusers pipeline saved in `folder`, fresh (no LoRA, no added words)."""
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assert_pipeline_matches(ours, pipe, prompt, negative):
    """Our `Pipeline` against diffusers' with the same prompt, negative prompt, initial latents and scheduler
    (DDIM, 10 steps, cfg 7.5, 16×16): within 1e-3 in [-1, 1]."""
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(42))
    expected = pipe(prompt, negative_prompt=negative, height=16, width=16, num_inference_steps=10,
                    guidance_scale=7.5, latents=latents, output_type="pt").images * 2 - 1
    image = ours(prompt, negative_prompt=negative, steps=10, sampler="ddim", cfg=7.5, latents=latents,
                 output_type="pt", progress=False) * 2 - 1
    assert expected.std() > 0.05
    assert (image - expected).abs().max() < 1e-3
