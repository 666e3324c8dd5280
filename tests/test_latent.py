"""Latent diffusion: the autoencoder's training run, the latent cache, and a pipeline that
generates and edits through the decoder."""

import csv
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.checkpoints import load_vae, read_config
from t2i.cli import main
from t2i.data import ImageFolder, load_dataset
from t2i.data.latents import cache_key
from t2i.errors import UserError
from t2i.images import make_grid, read_parameters, to_tensor
from t2i.text.clip import TextEncoderConfig
from t2i.models.unet import UNetConfig
from t2i.models.vae import AutoencoderKL, VAEConfig
from t2i.pipeline import Pipeline
from t2i.training.autoencoder import VAETrainConfig, measure_scaling_factor, resume_vae, train_vae
from t2i.training.datasets import latent_dataset
from t2i.training.diffusion import TrainConfig, train
from t2i.training.run_folder import current_checkpoint

VAE = VAEConfig(block_channels=(16, 32), latent_channels=4, norm_groups=8)  # f = 2
UNET = UNetConfig(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_dim=8,
                  pooled_dim=1)
TEXT = TextEncoderConfig(max_length=16, width=32, layers=1, heads=2, intermediate_size=64)


def vae_config(folder, **changes):
    base = dict(data=str(folder), image_size=16, batch_size=16, max_steps=60, lr=1e-3, warmup_steps=5,
                save_every=30, sample_every=60, num_samples=4, ema_decay=0.9, device="cpu")
    return VAETrainConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, colour_folder):
    out = tmp_path_factory.mktemp("vae")
    train_vae(VAE, vae_config(colour_folder), out)
    return out


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory, colour_folder, vae_run):
    out = tmp_path_factory.mktemp("latent")
    config = TrainConfig(data=str(colour_folder), image_size=16, batch_size=16, max_steps=6, save_every=6,
                         sample_every=6, num_samples=2, device="cpu", vae=str(vae_run))
    train(UNET, config, out, text_config=TEXT)
    return out


def test_autoencoder_run_learns_and_measures_its_scaling_factor(vae_run, colour_folder):
    with (vae_run / "loss.csv").open() as f:
        rows = list(csv.DictReader(f))
    rec = [float(r["reconstruction"]) for r in rows]
    assert rec[-1] < 0.5 * rec[0], rec
    assert float(rows[-1]["seconds"]) > 0
    for name in ("config.json", "vae.safetensors", "loss.png", "samples/step_000060.png",
                 "training/latest", "training/checkpoint-000060/optimizer.safetensors",
                 "training/checkpoint-000060/state.json"):
        assert (vae_run / name).is_file(), name
    vae = load_vae(vae_run)
    dataset = ImageFolder(colour_folder, 16)
    assert vae.config.scaling_factor != 1.0
    assert vae.config.scaling_factor == pytest.approx(measure_scaling_factor(vae, dataset), rel=0.05)
    x = torch.stack([dataset[i] for i in range(16)])
    with torch.no_grad():
        z = vae.encode(x).sample(torch.Generator().manual_seed(1)) * vae.config.scaling_factor
    assert 0.7 < z.std().item() < 1.4  # unit variance is what the factor is for


def test_autoencoder_resume_continues_exactly(tmp_path, colour_folder):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_vae(VAE, vae_config(colour_folder, max_steps=4, save_every=2, sample_every=100), straight)
    train_vae(VAE, vae_config(colour_folder, max_steps=2, save_every=2, sample_every=100), split)
    resume_vae(split, max_steps=4)
    a, b = load_vae(straight).state_dict(), load_vae(split).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adversarial_training_runs_and_resumes_with_its_discriminator(tmp_path, colour_folder):
    run = vae_config(colour_folder, max_steps=4, save_every=2, sample_every=100, disc_weight=0.5, disc_start=1)
    train_vae(VAE, dataclasses.replace(run, max_steps=2), tmp_path)
    resume_vae(tmp_path, max_steps=4)
    with (tmp_path / "loss.csv").open() as f:
        header = next(csv.reader(f))
    assert {"generator", "discriminator"} <= set(header)
    assert (current_checkpoint(tmp_path) / "discriminator_optimizer.safetensors").is_file()


def test_an_autoencoder_trains_on_a_folder_too_small_to_hold_any_image_out(tmp_path):
    folder = tmp_path / "few"
    folder.mkdir()
    for i in (0, 1, 2, 3, 5, 6):  # 4.png would fall on the held-out side of the fixed split
        Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(folder / f"{i}.png")
    with pytest.warns(UserWarning, match="the sample grids show training images: the test split .* is empty"):
        train_vae(VAE, vae_config(folder, batch_size=4, max_steps=1, save_every=1, sample_every=1), tmp_path / "run")
    assert (tmp_path / "run" / "samples").is_dir()


def test_latents_are_encoded_once_and_cached(latent_run, vae_run, colour_folder, monkeypatch):
    cached = list((latent_run / "cache").iterdir())
    assert len(cached) == 2  # the training split, and the held-out one the loss probe reads
    vae = load_vae(vae_run)
    config = TrainConfig.from_dict(read_config(latent_run)["train"])
    dataset = load_dataset(config.data, 16, "train", captioned=True)
    monkeypatch.setattr("t2i.data.latents.encode_dataset", lambda *a, **k: pytest.fail("encoded again"))
    latents = latent_dataset(dataset, vae, latent_run, config, "cpu")
    assert len(latents) == len(dataset) and latents.caption(3) == dataset.caption(3)
    with torch.no_grad():
        mean = vae.encode(dataset[3][0][None]).mean[0]
    torch.testing.assert_close(latents[3][0][:VAE.latent_channels], mean)
    other = AutoencoderKL(VAEConfig(**{**VAE.to_dict(), "latent_channels": 2}))
    assert all(c.name.startswith("latents-") for c in cached) and cache_key(other, {}) != cache_key(vae, {})


def test_latent_model_folder_holds_all_parts_and_generates(latent_run, vae_run):
    config = read_config(latent_run)
    assert set(config) >= {"unet", "text_encoder", "tokenizer", "vae"}
    assert config["unet"]["in_channels"] == VAE.latent_channels
    pipe = Pipeline.load(latent_run, "cpu")
    assert pipe.vae is not None and not pipe.clip and pipe.downsample_factor == 2
    assert pipe.vae.config.scaling_factor == load_vae(vae_run).config.scaling_factor
    images = pipe(["red", "blue"], steps=3, seed=0, progress=False)
    assert [im.size for im in images] == [(16, 16)] * 2
    again = pipe("blue", steps=3, seed=1, progress=False)[0]
    assert to_tensor(again).equal(to_tensor(images[1]))  # seed i+1 alone = image i+1 of the batch


def test_generate_vae_takes_a_train_vae_folder_and_refuses_a_config_of_no_autoencoder(latent_run, vae_run, tmp_path,
                                                                                         capsys):
    pipe = Pipeline.load(latent_run, "cpu")
    pipe.load_vae(vae_run)  # `t2i train-vae`'s folder, as `t2i train --vae` takes it
    for ours, theirs in zip(pipe.vae.state_dict().values(), load_vae(vae_run).state_dict().values()):
        assert ours.equal(theirs)
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    assert main(["generate", "red", "--model", str(latent_run), "--vae", str(tmp_path / "vae"),
                 "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a diffusers autoencoder's config: it has no 'in_channels'" in err


def test_t2i_sample_of_a_latent_model_is_generate_with_the_empty_prompt_unclipped(latent_run, tmp_path):
    assert main(["sample", "--model", str(latent_run), "--sampler", "ddim", "--steps", "3", "--num", "2",
                 "--seed", "5", "--device", "cpu", "--out", str(tmp_path / "grid.png")]) == 0
    expected = Pipeline.load(latent_run, "cpu")("", sampler="ddim", steps=3, seed=5, num_images=2, progress=False)
    grid = Image.open(tmp_path / "grid.png")
    assert to_tensor(grid.convert("RGB")).equal(to_tensor(make_grid(expected)))
    assert read_parameters(tmp_path / "grid.png")["clip"] is False  # latents are not images: never clipped


def test_the_sample_grid_of_a_latent_run_is_decoded_as_the_pipeline_decodes(latent_run):
    grid = latent_run / "samples" / "step_000006.png"
    parameters = read_parameters(grid)
    images = Pipeline.load(latent_run, "cpu")(parameters["prompts"], steps=parameters["steps"], sampler="ddim",
                                              cfg=parameters["cfg"], seed=parameters["seed"], progress=False)
    assert np.array_equal(np.asarray(Image.open(grid).convert("RGB")), np.asarray(make_grid(images)))


def test_latent_img2img_and_inpainting(latent_run, colour_folder):
    pipe = Pipeline.load(latent_run, "cpu")
    image = Image.open(next(colour_folder.glob("red0.png")))
    x = to_tensor(image)
    with torch.no_grad():
        round_trip = pipe.decode(pipe.encode_images(x[None]))[0]
    kept = to_tensor(pipe("red", image=image, strength=0.0, steps=4, progress=False)[0])
    assert (kept - round_trip).abs().max() <= 1 / 127.5 + 1e-6  # strength 0: the VAE round trip, 8-bit
    distances = [(to_tensor(pipe("blue", image=image, strength=s, steps=10, seed=0, progress=False)[0]) - x)
                 .abs().mean().item() for s in (0.0, 0.3, 1.0)]
    assert distances == sorted(distances) and distances[2] > distances[0], distances
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (0, 0, 8, 16))  # regenerate the left half
    out = to_tensor(pipe("blue", image=image, mask=mask, steps=4, seed=0, progress=False)[0])
    assert torch.equal(out[:, :, 8:], x[:, :, 8:])  # the kept half is the input, pixel for pixel
    assert not torch.equal(out[:, :, :8], x[:, :, :8])


def test_latent_editing_bad_input(latent_run):
    pipe = Pipeline.load(latent_run, "cpu")
    with pytest.raises(UserError, match="divisible by 4"):  # VAE f = 2 × U-Net f = 2
        pipe("red", image=Image.new("RGB", (18, 16)), progress=False)
    with pytest.raises(UserError, match="the mask is 8×8"):
        pipe("red", image=Image.new("RGB", (16, 16)), mask=Image.new("L", (8, 8)), progress=False)
    with pytest.raises(UserError, match="strength must be a finite number from 0 to 1"):
        pipe("red", image=Image.new("RGB", (16, 16)), strength=1.5, progress=False)


def test_cli_eval_vae_and_errors(vae_run, colour_folder, capsys):
    assert main(["eval", "vae", "--model", str(vae_run), "--data", str(colour_folder), "--split", "all",
                 "--num-images", "16", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "16 images" in out
    assert main(["generate", "red", "--model", str(vae_run)]) == 2
    assert "holds an autoencoder, not a diffusion model" in capsys.readouterr().err
    assert main(["train", "--vae", str(colour_folder), "--out", str(colour_folder / "x"), "--data",
                 str(colour_folder)]) == 2
    assert "has no config.json" in capsys.readouterr().err

