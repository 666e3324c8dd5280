"""Stable Diffusion v1 checkpoints: loaded offline into our networks, equal to diffusers.

The peer is diffusers/transformers with random weights at small configs that keep SD v1's
layout (cross-attention on all levels but the last, 8 heads, 32 GroupNorm groups, two
blocks per level, CLIP with quick GELU and heads of width 64), saved as a diffusers
folder, and also as an original single file written with our inverse key mapping.
"""

import time

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.convert.stable_diffusion import load_stable_diffusion, save_original
from t2i.errors import UserError
from t2i.text.clip_bpe import CLIPTokenizer
from t2i.pipeline import Pipeline

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from tiny_sd import SD_SCHEDULER, assert_pipeline_matches, randomize  # noqa: E402  (needs diffusers)

PROMPT, NEGATIVE = "a drawing of a dragon sitting on its hind legs", "blurry, low quality"
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A tiny random diffusers StableDiffusionPipeline and the folder it saved itself to."""
    folder = tmp_path_factory.mktemp("sd_diffusers")
    CLIPTokenizer.shipped().save(folder / "vocab")
    torch.manual_seed(0)
    unet = randomize(diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=128, attention_head_dim=8, norm_num_groups=32), 1)
    vae = randomize(diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32,
        sample_size=16, scaling_factor=0.18215), 2)
    text_encoder = randomize(transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, hidden_act="quick_gelu", eos_token_id=2, bos_token_id=0, pad_token_id=1)), 3)
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab" / "vocab.json"), str(folder / "vocab" / "merges.txt"),
                                           model_max_length=77)
    scheduler = diffusers.DDIMScheduler(**SD_SCHEDULER)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(folder / "pipe")
    return pipe, folder / "pipe"


@pytest.fixture(scope="module")
def single_file(reference, tmp_path_factory):
    networks, _, _ = load_stable_diffusion(reference[1])
    return save_original(networks, tmp_path_factory.mktemp("sd_single") / "tiny-sd-v1.safetensors")


def assert_networks_match_diffusers(networks, pipe):
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 777])
    ids = torch.randint(0, 49408, (2, 77))
    ids[:, -1] = 49407
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        context = networks["text_encoder"](ids)
        expected_context = pipe.text_encoder(ids).last_hidden_state
        torch.testing.assert_close(context, expected_context, rtol=0, atol=1e-4)
        expected = pipe.unet(x, t, encoder_hidden_states=context).sample
        assert expected.abs().mean() > 0.1
        torch.testing.assert_close(networks["unet"](x, t, context), expected, rtol=0, atol=1e-4)
        posterior, theirs = networks["vae"].encode(image), pipe.vae.encode(image).latent_dist
        torch.testing.assert_close(posterior.mean, theirs.mean, rtol=0, atol=1e-4)
        torch.testing.assert_close(posterior.logvar, theirs.logvar, rtol=0, atol=1e-4)
        torch.testing.assert_close(networks["vae"].decode(x), pipe.vae.decode(x).sample, rtol=0, atol=1e-4)


def test_diffusers_folder_loads_into_our_networks(reference):
    pipe, folder = reference
    networks, config, tokenizer = load_stable_diffusion(folder)
    assert networks["unet"].config.attention_levels == (0,) and networks["unet"].config.num_heads == 8
    assert config["diffusion"] == {"schedule": "scaled_linear", "num_timesteps": 1000, "prediction_type": "epsilon",
                                   "steps_offset": 1, "set_alpha_to_one": False}
    assert config["image_size"] == 16 and tokenizer.max_length == 77
    assert_networks_match_diffusers(networks, pipe)


def test_original_single_file_round_trips_and_matches_diffusers(reference, single_file, tmp_path):
    pipe, folder = reference
    from_folder, _, _ = load_stable_diffusion(folder)
    networks, config, _ = load_stable_diffusion(single_file)
    for name, network in networks.items():  # architecture inferred from the shapes alone, weights unchanged
        assert network.config == from_folder[name].config, name
        theirs = from_folder[name].state_dict()
        assert all(torch.equal(value, theirs[key]) for key, value in network.state_dict().items()), name
    assert_networks_match_diffusers(networks, pipe)
    # the file is what diffusers' own single-file converter reads as SD v1
    unet = diffusers.UNet2DConditionModel.from_single_file(str(single_file), config=str(folder), subfolder="unet",
                                                           local_files_only=True)
    for key, value in pipe.unet.state_dict().items():
        assert torch.equal(unet.state_dict()[key], value), key
    # the same weights in a pickled .ckpt with a "state_dict", loaded through weights_only=True, in bf16
    from safetensors.torch import load_file

    torch.save({"state_dict": load_file(str(single_file)), "global_step": 470000}, tmp_path / "sd.ckpt")
    bf16, _, _ = load_stable_diffusion(tmp_path / "sd.ckpt", torch.bfloat16)
    weight = bf16["unet"].conv_in.weight
    assert weight.dtype == torch.bfloat16 and torch.equal(weight, networks["unet"].conv_in.weight.bfloat16())


def test_sd_v1_full_size_unet_matches_diffusers():
    """SD v1's U-Net at its real size (859.5M parameters), one forward on an 8×8 latent.
    Our network shares the reference's tensors (meta construction + assign), so memory holds one copy."""
    from t2i.random_weights import ours_from, random_sd_v1_unet

    theirs = random_sd_v1_unet()
    ours = ours_from(theirs)
    assert ours.conv_in.weight.data_ptr() == theirs.conv_in.weight.data_ptr()  # no second copy
    generator = torch.Generator().manual_seed(1)
    x, t = torch.randn(1, 4, 8, 8, generator=generator), torch.tensor([500])
    context = torch.randn(1, 77, 768, generator=generator)
    with torch.no_grad():
        expected = theirs(x, t, encoder_hidden_states=context).sample
        out = ours(x, t, context)
    assert expected.abs().mean() > 0.1
    assert (out - expected).abs().max() < 1e-4


def test_pipeline_equals_stable_diffusion_pipeline(reference):
    """Same prompt, negative prompt, initial latents and scheduler: DDIM, 10 steps, cfg 7.5."""
    pipe, folder = reference
    ours = Pipeline.load(folder, device="cpu")
    with torch.no_grad():
        theirs_embeds, theirs_negative = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
    torch.testing.assert_close(ours.encode_prompt([PROMPT]), theirs_embeds, rtol=0, atol=1e-4)
    torch.testing.assert_close(ours.encode_prompt(NEGATIVE), theirs_negative, rtol=0, atol=1e-4)
    assert_pipeline_matches(ours, pipe, PROMPT, NEGATIVE)


def test_img2img_equals_stable_diffusion_img2img_pipeline(reference):
    pipe, folder = reference
    ours = Pipeline.load(folder, device="cpu")
    picture = Image.fromarray((torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(1)) * 255)
                              .to(torch.uint8).numpy())
    img2img = diffusers.StableDiffusionImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    with torch.no_grad():  # diffusers samples q(z|x); give it the posterior mean that we use, as latents
        pixels = torch.tensor(np.array(picture)).permute(2, 0, 1)[None].float() / 127.5 - 1
        init = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    expected = img2img(PROMPT, image=init, strength=0.6, num_inference_steps=10, guidance_scale=7.5,
                       negative_prompt=NEGATIVE, generator=torch.Generator().manual_seed(7),
                       output_type="pt").images * 2 - 1
    image = ours(PROMPT, negative_prompt=NEGATIVE, steps=10, sampler="ddim", cfg=7.5, image=picture, strength=0.6,
                 latents=noise, output_type="pt", progress=False) * 2 - 1
    assert (image - expected).abs().max() < 1e-3


def test_inpainting_unet_with_nine_channels_loads_and_inpaints(tmp_path):
    from t2i.convert.stable_diffusion import convert

    networks = {}
    torch.manual_seed(0)
    from t2i.text.clip import CLIPTextTransformer, TextEncoderConfig
    from t2i.models.unet import UNet, UNetConfig
    from t2i.models.vae import AutoencoderKL, VAEConfig

    config = UNetConfig(in_channels=9, out_channels=4, model_channels=32, channel_mult=(1, 2), attention_levels=(0,),
                        num_heads=8, context_dim=64, norm_groups=32)
    networks["unet"] = randomize(UNet(config), 0)
    networks["vae"] = randomize(AutoencoderKL(VAEConfig(block_channels=(32, 32), norm_groups=32,
                                                        scaling_factor=0.18215)), 1)
    networks["text_encoder"] = CLIPTextTransformer(TextEncoderConfig(width=64, layers=1, heads=1,
                                                                     intermediate_size=128, eos_token_id=None))
    path = save_original(networks, tmp_path / "inpainting.safetensors")
    pipe = Pipeline.load(path, device="cpu")
    assert pipe.unet.config.in_channels == 9 and pipe.latent_channels == 4
    picture = Image.new("RGB", (16, 16), (200, 30, 30))
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (0, 0, 8, 16))
    out = pipe("a cat", image=picture, mask=mask, steps=3, cfg=7.5, seed=0, progress=False, output_type="pt") * 2 - 1
    assert out.shape == (1, 3, 16, 16)
    kept = torch.tensor([200, 30, 30]) / 127.5 - 1
    torch.testing.assert_close(out[0, :, :, 8:], kept[:, None, None].expand(3, 16, 8), atol=1e-2, rtol=0)
    assert (out[0, :, :, :8] - kept[:, None, None]).abs().max() > 0.1  # the masked half is redrawn
    assert convert(path, tmp_path / "ours").joinpath("config.json").is_file()


def test_convert_writes_our_folder_diffusers_and_original_formats(reference, single_file, tmp_path, capsys):
    from safetensors.torch import load_file

    from t2i.cli import main

    pipe, _ = reference
    assert main(["convert", str(single_file), str(tmp_path / "ours")]) == 0
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "diffusers"), "--to", "diffusers"]) == 0
    assert main(["convert", str(tmp_path / "diffusers"), str(tmp_path / "back.safetensors"), "--to", "original"]) == 0
    original, back = load_file(str(single_file)), load_file(str(tmp_path / "back.safetensors"))
    assert original.keys() == back.keys() and all(torch.equal(original[k], back[k]) for k in original)
    again = diffusers.StableDiffusionPipeline.from_pretrained(str(tmp_path / "diffusers"), local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        theirs = getattr(pipe, name).state_dict()
        for key, value in getattr(again, name).state_dict().items():
            assert torch.equal(value, theirs[key]), (name, key)
    ours = Pipeline.load(tmp_path / "ours", device="cpu")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    expected = pipe(PROMPT, height=16, width=16, num_inference_steps=4, latents=latents, output_type="pt").images
    image = ours(PROMPT, steps=4, cfg=7.5, latents=latents, output_type="pt", progress=False)
    assert (image - expected).abs().max() < 0.5e-3  # 1e-3 in [-1, 1]
    assert main(["generate", PROMPT, "--model", str(single_file), "--steps", "2", "--seed", "0",
                 "--out", str(tmp_path / "sd.png")]) == 0
    assert Image.open(tmp_path / "sd.png").size == (128, 128)  # a single file does not say: SD v1's 64×64 latents


def write(path, tensors):
    from safetensors.torch import save_file

    save_file({k: torch.zeros(shape) for k, shape in tensors.items()}, str(path))
    return path


UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
TO_K = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


@pytest.mark.parametrize("tensors, message", [
    ({"conditioner.embedders.1.model.positional_embedding": (77, 1280)}, "an SDXL checkpoint"),
    ({UNET_IN: (320, 4, 3, 3), TO_K: (320, 2048)}, "an SDXL U-Net \\(context width 2048\\)"),
    ({"model.diffusion_model.double_blocks.0.img_attn.qkv.weight": (3, 3)}, "a FLUX checkpoint"),
    ({"encoder.conv_in.weight": (4, 3, 3, 3)}, "autoencoder \\(VAE\\) alone"),
    ({UNET_IN: (320, 8, 3, 3), TO_K: (320, 768)}, "InstructPix2Pix"),
    ({UNET_IN: (320, 4, 3, 3), TO_K: (320, 768), "cond_stage_model.transformer.x": (1,)}, "no autoencoder \\(VAE\\)"),
    ({UNET_IN: (320, 4, 3, 3), TO_K: (320, 768), "first_stage_model.x": (1,)}, "no text encoder"),
])
def test_other_checkpoints_are_named_in_one_line(tmp_path, tensors, message):
    with pytest.raises(UserError, match=message) as error:
        load_stable_diffusion(write(tmp_path / "model.safetensors", tensors))
    assert "\n" not in str(error.value)


def test_damaged_files_and_code_running_pickles_are_refused(single_file, tmp_path, capsys):
    from t2i.cli import main

    data = single_file.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, tmp_path / "sd.ckpt")
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "sd.ckpt").read_bytes()[:2000])

    marker = tmp_path / "ran"

    class RunsCode:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": RunsCode()}, tmp_path / "evil.ckpt")
    for name, message in (("cut.safetensors", "not a readable safetensors file"),
                          ("cut.ckpt", "not a readable checkpoint"),
                          ("evil.ckpt", "may run code: refused without running it")):
        with pytest.raises(UserError, match=message):
            load_stable_diffusion(tmp_path / name)
        assert main(["generate", "a cat", "--model", str(tmp_path / name), "--out", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("t2i: error: ") and err.count("\n") == 1 and message in err
    assert not marker.exists()


def test_what_sd_1_4s_own_checkpoint_pickles_beside_its_weights_is_read_without_running(tmp_path, monkeypatch):
    import sys
    import types

    from t2i.convert.tensors import open_weights

    # sd-v1-4.ckpt pickles PyTorch Lightning's ModelCheckpoint callback; here a class of that name, gone at load
    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        def __init__(self):
            self.monitor, self.save_top_k = None, -1

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = module.__name__, "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks"):  # pickle imports the parents too
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    torch.save({"state_dict": {"w": torch.ones(3)}, "callbacks": {ModelCheckpoint: {"best_model_score": None}},
                "global_step": 470000, "keep": ModelCheckpoint()}, tmp_path / "sd-v1-4.ckpt")
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", module.__name__):
        monkeypatch.delitem(sys.modules, name)
    assert torch.equal(open_weights(tmp_path / "sd-v1-4.ckpt")["w"], torch.ones(3))


def test_t2i_serve_offers_sd_files_of_its_models_dir_by_name(single_file, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from t2i.serve.app import ServerSettings, create_app

    from t2i.serve.limits import Limits

    settings = ServerSettings(tmp_path / "data", models_dir=single_file.parent, limits=Limits(max_pixels=16 * 16))
    app = create_app(settings)
    with TestClient(app) as client:
        models = {model["id"]: model for model in client.get("/api/models").json()["models"]}
        assert "tiny-sd-v1" in models and models["tiny-sd-v1"]["loaded"] is False
        # one side given, the other the model's own, unknown until it loads: the size is checked then
        job = client.post("/api/jobs", json={"prompt": PROMPT, "model": "tiny-sd-v1", "steps": 2, "width": 64}).json()
        while job["state"] in ("queued", "running"):
            time.sleep(0.05)
            job = client.get(f"/api/jobs/{job['id']}").json()
        assert job["state"] == "failed" and "max_pixels" in job["error"], job
        refused = client.post("/api/jobs", json={"prompt": PROMPT, "model": "tiny-sd-v1", "width": 64, "height": 64})
        assert refused.status_code == 422 and refused.json()["limit"] == "max_pixels"
        job = client.post("/api/jobs", json={"prompt": PROMPT, "model": "tiny-sd-v1", "steps": 2, "seed": 1,
                                             "width": 16, "height": 16}).json()
        while job["state"] in ("queued", "running"):
            time.sleep(0.05)
            job = client.get(f"/api/jobs/{job['id']}").json()
        assert job["state"] == "done", job["error"]
        assert job["images"][0]["parameters"]["model"] == "tiny-sd-v1"  # its id, not its path on the server
        assert "tiny-sd-v1" in [model["title"] for model in client.get("/sdapi/v1/sd-models").json()]
