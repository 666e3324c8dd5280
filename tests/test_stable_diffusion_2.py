"""Stable Diffusion 2.x checkpoints (ε and v-prediction) loaded offline into our networks, equal to diffusers.

The peer is a tiny random diffusers pipeline of SD 2's layout: linear proj_in/proj_out, heads of
width 64 counted per level, an OpenCLIP-style text encoder (GELU, padding with "!") and, for the
768-v models, v-prediction. The original single file is written with our OpenCLIP names and read
back by diffusers' own single-file loader.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.convert.stable_diffusion import load_stable_diffusion, save_original
from t2i.errors import UserError
from t2i.metadata import from_infotext, to_infotext
from t2i.pipeline import Pipeline

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from tiny_sd import assert_pipeline_matches, load_reference, randomize, tiny_sd_folder  # noqa: E402  (needs diffusers)

PROMPT, NEGATIVE = "a sea turtle swimming over a coral reef", "blurry"


@pytest.fixture(scope="module")
def epsilon(tmp_path_factory):
    """The ε model alone: for the tests that never reach the prediction type."""
    folder = tiny_sd_folder(tmp_path_factory.mktemp("sd2"), sd2=True, prediction="epsilon")
    return load_reference(folder), folder


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def reference(request, tmp_path_factory):
    if request.param == "epsilon":
        return request.getfixturevalue("epsilon")  # one ε model for the module
    folder = tiny_sd_folder(tmp_path_factory.mktemp("sd2"), sd2=True, prediction=request.param)
    return load_reference(folder), folder


def assert_networks_match_diffusers(networks, pipe):
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 777])
    ids = pipe.tokenizer([PROMPT, ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        context = networks["text_encoder"](ids)
        torch.testing.assert_close(context, pipe.text_encoder(ids).last_hidden_state, rtol=0, atol=1e-4)
        expected = pipe.unet(x, t, encoder_hidden_states=context).sample
        assert expected.abs().mean() > 0.1
        torch.testing.assert_close(networks["unet"](x, t, context), expected, rtol=0, atol=1e-4)
        torch.testing.assert_close(networks["vae"].decode(x), pipe.vae.decode(x).sample, rtol=0, atol=1e-4)


def test_sd2_diffusers_folder_loads_and_the_pipeline_equals_diffusers(reference):
    pipe, folder = reference
    networks, config, tokenizer = load_stable_diffusion(folder)
    unet = networks["unet"].config
    assert unet.linear_projection and unet.num_heads is None and unet.head_dim == 64
    assert config["diffusion"]["prediction_type"] == {"epsilon": "epsilon", "v_prediction": "v"}[
        pipe.scheduler.config.prediction_type]
    assert tokenizer.pad_token == "!"
    assert_networks_match_diffusers(networks, pipe)

    ours = Pipeline.load(folder, device="cpu")
    torch.testing.assert_close(ours.encode_prompt([PROMPT]), pipe.encode_prompt(PROMPT, "cpu", 1, False)[0],
                               rtol=0, atol=1e-4)
    assert_pipeline_matches(ours, pipe, PROMPT, NEGATIVE)


def test_sd2_original_file_reads_the_penultimate_block_and_diffusers_reads_it(reference, tmp_path):
    pipe, folder = reference
    from_folder, folder_config, _ = load_stable_diffusion(folder)
    path = save_original(from_folder, tmp_path / "tiny-sd2.safetensors")
    if folder_config["diffusion"]["prediction_type"] == "v":  # the file cannot say: the .yaml beside it does
        path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    networks, config, tokenizer = load_stable_diffusion(path)
    text = networks["text_encoder"].config
    assert text.layers == 3 and text.skip_layers == 1 and text.activation == "gelu" and tokenizer.pad_token == "!"
    assert networks["unet"].config == from_folder["unet"].config
    assert config["diffusion"] == folder_config["diffusion"]
    assert config["image_size"] == (192 if config["diffusion"]["prediction_type"] == "v" else 128)  # 96² or 64² latents
    assert_networks_match_diffusers(networks, pipe)
    # the file is what diffusers' own single-file converter reads as SD 2
    theirs = diffusers.StableDiffusionPipeline.from_single_file(str(path), config=str(folder), local_files_only=True,
                                                                safety_checker=None)
    for name in ("unet", "vae", "text_encoder"):
        expected = getattr(pipe, name).state_dict()
        for key, value in getattr(theirs, name).state_dict().items():
            assert torch.equal(value, expected[key]), (name, key)
    # and our file written again from it holds the same tensors
    again = save_original(networks, tmp_path / "again.safetensors")
    from safetensors.torch import load_file

    first, second = load_file(str(path)), load_file(str(again))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_a_diffusers_folder_takes_its_schedulers_spacing_and_sd2s_padding_without_its_tokenizer(epsilon, tmp_path):
    import json
    import shutil

    _, folder = epsilon
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    shutil.rmtree(copy / "tokenizer")
    scheduler = copy / "scheduler" / "scheduler_config.json"
    values = json.loads(scheduler.read_text())
    scheduler.write_text(json.dumps({**values, "timestep_spacing": "trailing"}))
    _, config, tokenizer = load_stable_diffusion(copy)
    assert tokenizer.pad_token == "!" and config["inference"]["spacing"] == "trailing"
    scheduler.write_text(json.dumps({**values, "rescale_betas_zero_snr": True}))
    with pytest.raises(UserError, match="rescale_betas_zero_snr .* is not supported"):
        load_stable_diffusion(copy)


def test_clip_skip_reads_an_earlier_block(epsilon):
    """AUTOMATIC1111's "Clip skip: 2" is the final norm of the penultimate block's state (transformers'
    hidden_states[-2]); 1 is the plain output, and a skip past the first block is refused."""
    pipe, folder = epsilon
    ours = Pipeline.load(folder, device="cpu")
    ids = pipe.tokenizer([PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        model = getattr(pipe.text_encoder, "text_model", pipe.text_encoder)  # transformers 5 has no text_model
        expected = model.final_layer_norm(hidden)
        torch.testing.assert_close(ours.text_encoder(ids, clip_skip=2), expected, rtol=0, atol=1e-4)
    with pytest.raises(UserError, match="clip skip 3 must be from 1 to 2"):
        ours.text_encoder(ids, clip_skip=3)


def test_sd2_prediction_of_a_single_file(epsilon, tmp_path):
    _, folder = epsilon
    networks, _, _ = load_stable_diffusion(folder)
    path = save_original(networks, tmp_path / "model.safetensors")
    assert load_stable_diffusion(path)[1]["diffusion"]["prediction_type"] == "epsilon"  # nothing says v
    path.with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: 'v'\n")
    assert load_stable_diffusion(path)[1]["diffusion"]["prediction_type"] == "v"
    path.with_suffix(".yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert load_stable_diffusion(path)[1]["diffusion"]["prediction_type"] == "epsilon"


def test_without_a_yaml_an_sd2_file_is_told_v_by_its_weights_as_comfyui_tells_it(tmp_path):
    from t2i.convert.stable_diffusion import V_TELL, original_prediction
    from t2i.convert.tensors import StateDictWeights

    def weights(std: float, channels: int = 4) -> StateDictWeights:
        bias = torch.randn(320, generator=torch.Generator().manual_seed(0))
        return StateDictWeights({"model.diffusion_model." + V_TELL: bias / bias.std(unbiased=False) * std,
                                 "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, channels, 3, 3)})

    path = tmp_path / "v2-1_768-ema-pruned.safetensors"
    assert original_prediction(path, weights(0.2)) == "v"
    assert original_prediction(path, weights(0.02)) == "epsilon"
    assert original_prediction(path, weights(0.2, channels=9)) == "epsilon"  # SD 2's inpainting model
    path.with_suffix(".yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert original_prediction(path, weights(0.2)) == "epsilon"  # a .yaml beside it says it


def test_clip_skip_in_the_pipeline_equals_diffusers_and_is_written_as_automatic1111_does(reference):
    """Our clip_skip 2 (AUTOMATIC1111's count) against diffusers given the penultimate state's final norm as
    prompt embeddings (its own clip_skip reads `text_model`, which transformers 5 no longer has)."""
    pipe, folder = reference
    ours = Pipeline.load(folder, device="cpu")
    model = getattr(pipe.text_encoder, "text_model", pipe.text_encoder)

    def penultimate(text):
        ids = pipe.tokenizer([text], padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            return model.final_layer_norm(pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2])

    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    expected = pipe(prompt_embeds=penultimate(PROMPT), negative_prompt_embeds=penultimate(""), height=16, width=16,
                    num_inference_steps=4, guidance_scale=7.5, latents=latents, output_type="pt").images
    image = ours(PROMPT, steps=4, sampler="ddim", cfg=7.5, latents=latents, clip_skip=2, progress=False)[0]
    assert (torch.tensor(np.asarray(image)).permute(2, 0, 1) / 255 - expected[0]).abs().max() < 1 / 255 + 1e-3
    assert "Clip skip: 2" in to_infotext(image.info["t2i"])
    assert from_infotext(to_infotext(image.info["t2i"]))["clip_skip"] == 2
    plain = ours(PROMPT, steps=4, sampler="ddim", cfg=7.5, latents=latents, clip_skip=1, progress=False)[0]
    assert "Clip skip" not in to_infotext(plain.info["t2i"])
    assert np.asarray(plain).tolist() != np.asarray(image).tolist()
    with pytest.raises(UserError, match="clip skip"):
        ours(PROMPT, steps=1, clip_skip=5, progress=False)


def test_a_separate_vae_replaces_the_models_own(epsilon, tmp_path, capsys):
    from safetensors.torch import save_file

    from t2i.cli import main
    from t2i.convert import vae_names

    pipe, folder = epsilon
    other = randomize(diffusers.AutoencoderKL(**pipe.vae.config), 9)
    other.save_pretrained(tmp_path / "vae")  # a diffusers vae/ folder
    networks, _, _ = load_stable_diffusion(folder)
    mine = networks["vae"]
    with torch.no_grad():
        mine.load_state_dict({ours: other.state_dict()[theirs]
                              for ours, theirs in vae_names.foreign_names(mine.config, "diffusers").items()})
    original = vae_names.to_foreign_state_dict(dict(mine.state_dict()), mine.config, "original")
    save_file({k: v.contiguous() for k, v in original.items()}, str(tmp_path / "other.vae.safetensors"))
    z = torch.randn(1, 4, 8, 8)
    for source in (tmp_path / "vae", tmp_path / "other.vae.safetensors"):
        ours = Pipeline.load(folder, device="cpu")
        ours.load_vae(source)
        with torch.no_grad():
            torch.testing.assert_close(ours.vae.decode(z), other.decode(z).sample, rtol=0, atol=1e-4)
        assert ours.vae.config.scaling_factor == pipe.vae.config.scaling_factor
    save_file({"w": torch.zeros(2)}, str(tmp_path / "not-a-vae.safetensors"))
    with pytest.raises(UserError, match="not an autoencoder"):
        Pipeline.load(folder, device="cpu").load_vae(tmp_path / "not-a-vae.safetensors")
    out = tmp_path / "skip.png"
    assert main(["generate", PROMPT, "--model", str(folder), "--steps", "2", "--seed", "0", "--width", "16",
                 "--height", "16", "--clip-skip", "2", "--vae", str(tmp_path / "other.vae.safetensors"),
                 "--out", str(out)]) == 0
    assert "Clip skip: 2" in Image.open(out).info["parameters"]
    assert main(["generate", PROMPT, "--model", str(folder), "--vae", str(tmp_path / "missing.pt"),
                 "--out", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_automatic1111_api_takes_clip_skip_from_override_settings(epsilon, tmp_path):
    pytest.importorskip("fastapi")
    import json

    from fastapi.testclient import TestClient

    from t2i.serve.app import ServerSettings, create_app

    _, folder = epsilon
    networks, _, _ = load_stable_diffusion(folder)
    save_original(networks, tmp_path / "models" / "tiny-sd2.safetensors")
    app = create_app(ServerSettings(tmp_path / "data", models_dir=tmp_path / "models"))
    with TestClient(app) as client:
        body = {"prompt": PROMPT, "steps": 2, "seed": 1, "width": 16, "height": 16,
                "override_settings": {"sd_model_checkpoint": "tiny-sd2", "CLIP_stop_at_last_layers": 2}}
        answer = client.post("/sdapi/v1/txt2img", json=body)
        assert answer.status_code == 200, answer.text
        assert "Clip skip: 2" in json.loads(answer.json()["info"])["infotexts"][0]
        bad = client.post("/api/jobs", json={"prompt": PROMPT, "model": "tiny-sd2", "clip_skip": 0})
        assert bad.status_code == 422 and "clip_skip" in bad.json()["detail"]

        # set once with /options, as AUTOMATIC1111's clients do, for every job after
        assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1
        assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
        body["override_settings"] = {"sd_model_checkpoint": "tiny-sd2"}
        answer = client.post("/sdapi/v1/txt2img", json=body)
        assert "Clip skip: 2" in json.loads(answer.json()["info"])["infotexts"][0]
        wrong = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 0})
        assert wrong.status_code == 422 and "CLIP_stop_at_last_layers" in wrong.json()["detail"]
