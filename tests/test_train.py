"""Training learns, checkpoints, and resumes exactly where it stopped."""

import csv
import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.checkpoints import build_components, load_model, read_config
from t2i.data import ImageFolder, load_dataset
from t2i.errors import UserError
from t2i.evaluation import nll_on_dataset
from t2i.images import make_grid, read_parameters
from t2i.text.clip import TextEncoderConfig
from t2i.models.unet import UNet, UNetConfig
from t2i.pipeline import Pipeline
from t2i.training.diffusion import TrainConfig, resume, train
from t2i.training.probes import LossProbe
from t2i.training.run_folder import read_state

UNET = UNetConfig(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_dim=8)
TEXT = TextEncoderConfig(max_length=16, width=32, layers=1, heads=2, intermediate_size=64)


def config(**changes):
    base = dict(data="shapes", image_size=16, batch_size=16, max_steps=200, lr=2e-3, warmup_steps=20,
                save_every=100, sample_every=200, log_every=10, num_samples=4, ema_decay=0.99, device="cpu")
    return TrainConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(UNET, config(keep_every=100, probe_every=100, probe_examples=32), out)
    return out


def test_loss_falls_and_the_run_folder_is_complete(trained):
    with (trained / "loss.csv").open() as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:2]) / 2
    for name in ("config.json", "unet.safetensors", "loss.png", "samples/step_000200.png",
                 "training/latest", "training/checkpoint-000200/optimizer.safetensors",
                 "training/checkpoint-000200/state.json"):
        assert (trained / name).is_file(), name
    early, final = load_model(trained / "snapshots" / "step_000100")[0], load_model(trained)[0]
    assert read_config(trained / "snapshots" / "step_000100")["step"] == 100
    assert not torch.equal(early.state_dict()["conv_in.weight"], final.state_dict()["conv_in.weight"])
    final_snapshot = load_model(trained / "snapshots" / "step_000200")[0].state_dict()
    assert all(torch.equal(v, final_snapshot[k]) for k, v in final.state_dict().items())


def test_the_loss_log_probes_fixed_training_and_held_out_examples(trained):
    with (trained / "loss.csv").open() as f:
        probed = [row for row in csv.DictReader(f) if row["held_out_fixed"]]
    assert [int(row["step"]) for row in probed] == [100, 200]
    _, diffusion, _ = load_model(trained)
    held_out = load_dataset("shapes", 16, "test")
    probe, again = (LossProbe(held_out, 32, diffusion, seed=1) for _ in range(2))
    untrained = UNet(UNET).eval()
    before = probe(diffusion, untrained, None, batch_size=16, device="cpu")
    assert again(diffusion, untrained, None, batch_size=16, device="cpu") == before  # fixed t, noise and examples
    for name in ("train_fixed", "held_out_fixed"):
        assert float(probed[-1][name]) < 0.5 * before, name


def test_trained_model_beats_the_untrained_one_on_held_out_nll(trained):
    model, diffusion, _ = load_model(trained)
    test = load_dataset("shapes", 16, "test")
    untrained = UNet(UNET).eval()
    kwargs = dict(num_images=16, num_timesteps=40, seed=0, progress=False)
    before = nll_on_dataset(untrained, diffusion, test, **kwargs).bits_per_dim
    after = nll_on_dataset(model, diffusion, test, **kwargs).bits_per_dim
    assert after < 0.75 * before  # 200 steps of a tiny model: far from good, but far better than chance


def test_resume_continues_exactly(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(UNET, config(max_steps=6, save_every=3, sample_every=100), straight)
    train(UNET, config(max_steps=3, save_every=3, sample_every=100), split)
    resume(split, max_steps=6)
    a, b = load_model(straight)[0].state_dict(), load_model(split)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_flow_matching_run_resumes_exactly_and_generates(tmp_path):
    """--prediction flow: fractional logit-normal timesteps drawn per example, so resume is still exact."""
    flow = dict(prediction_type="flow", schedule="rectified_flow", sample_every=100)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(UNET, config(max_steps=6, save_every=3, **flow), straight)
    train(UNET, config(max_steps=3, save_every=3, **flow), split)
    resume(split, max_steps=6)
    a, b = load_model(straight)[0].state_dict(), load_model(split)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    image = Pipeline.load(straight, "cpu")(num_images=1, steps=4, seed=0, progress=False)[0]
    assert np.asarray(image).std() > 0
    with pytest.raises(UserError, match="min-snr-gamma"):
        config(min_snr_gamma=5.0, **flow)


def test_resume_takes_a_new_learning_rate_or_cooldown_only_when_asked(tmp_path):
    train(UNET, config(max_steps=2, save_every=2, sample_every=100, lr=1e-3), tmp_path)
    resume(tmp_path, max_steps=3)  # lr not among the changes: kept
    assert read_config(tmp_path)["train"]["lr"] == 1e-3
    resume(tmp_path, max_steps=4, lr=5e-4)
    assert read_config(tmp_path)["train"]["lr"] == 5e-4 and read_config(tmp_path)["step"] == 4
    resume(tmp_path, max_steps=6, cooldown_steps=2)
    assert read_config(tmp_path)["train"]["cooldown_steps"] == 2 and read_config(tmp_path)["train"]["lr"] == 5e-4
    with pytest.raises(UserError, match="keeps its batch_size"):
        resume(tmp_path, max_steps=7, batch_size=8)
    assert read_config(tmp_path)["step"] == 6  # refused before any step
    with pytest.warns(UserWarning, match="goes on on 'shapes2'.*probes take their fixed examples from the new"):
        resume(tmp_path, max_steps=7, data="shapes2")  # a cooldown on other data: the rest stays the run's
    saved = read_config(tmp_path)
    assert saved["train"]["data"] == "shapes2" and saved["step"] == 7 and saved["train"]["lr"] == 5e-4


def test_a_bf16_run_on_the_cpu_resumed_ends_bit_equal_to_one_that_ran_straight(tmp_path):
    # its U-Net is channels-last there: AdamW's fused kernel must find each moment in its weight's layout
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run = config(max_steps=6, probe_every=0, sample_every=100, save_every=3, mixed_precision="bf16", device="cpu")
    train(UNET, run, straight)
    train(UNET, dataclasses.replace(run, max_steps=3), stopped)
    resume(stopped, max_steps=6)
    for a, b in zip(load_model(straight)[0].state_dict().values(), load_model(stopped)[0].state_dict().values()):
        assert torch.equal(a, b)


def test_bf16_mixed_precision_follows_the_float32_run_and_can_be_switched_on_resume(tmp_path):
    full, mixed = tmp_path / "fp32", tmp_path / "bf16"
    train(UNET, config(max_steps=20, probe_every=0, sample_every=100), full)
    train(UNET, config(max_steps=20, probe_every=0, sample_every=100, mixed_precision="bf16"), mixed)
    losses = {}
    for run in (full, mixed):
        with (run / "loss.csv").open() as f:
            losses[run.name] = torch.tensor([float(row["loss"]) for row in csv.DictReader(f)])
    assert not torch.equal(losses["fp32"], losses["bf16"])  # autocast was on
    assert torch.allclose(losses["fp32"], losses["bf16"], rtol=0.01)  # and the same steps were taken
    assert all(p.dtype == torch.float32 for p in load_model(mixed)[0].parameters())
    assert read_config(mixed)["train"]["mixed_precision"] == "bf16"
    resume(mixed, max_steps=22, mixed_precision="no")
    assert read_config(mixed)["train"]["mixed_precision"] == "no" and read_config(mixed)["step"] == 22
    with pytest.raises(UserError, match="unknown mixed precision 'fp8'"):
        config(mixed_precision="fp8")


def test_fp16_mixed_precision_scales_the_loss_and_resumes_exactly_with_its_scaler(tmp_path):
    from t2i.training.run_folder import read_state

    straight, split = tmp_path / "straight", tmp_path / "split"
    train(UNET, config(max_steps=6, save_every=3, probe_every=0, sample_every=100, mixed_precision="fp16"), straight)
    train(UNET, config(max_steps=3, save_every=3, probe_every=0, sample_every=100, mixed_precision="fp16"), split)
    assert read_state(split)["grad_scaler"]["scale"] > 0  # the loss scale is part of the training state
    resume(split, max_steps=6)
    with (straight / "loss.csv").open() as f:
        assert all(math.isfinite(float(row["loss"])) for row in csv.DictReader(f))
    x, y = (load_model(run)[0].state_dict() for run in (straight, split))
    assert all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("p_uncond", [0.0, 0.25])
def test_captions_are_dropped_for_guidance_as_often_as_p_uncond_says(p_uncond):
    from t2i.training.diffusion import step_examples

    config = TrainConfig(p_uncond=p_uncond, seed=0)
    batch = (torch.zeros(2000, 3, 4, 4), ["a red circle\na circle"] * 2000)  # two phrasings, one drawn
    dropped = []
    for k in range(3):  # each step draws anew: 6,000 examples, a share's standard error ~0.006
        _, captions, _ = step_examples(batch, k, config, range(2000), torch.device("cpu"), captioned=True)
        assert {"a red circle", "a circle"} <= set(captions) <= {"", "a red circle", "a circle"}
        dropped += [c == "" for c in captions]
    assert np.mean(dropped) == pytest.approx(p_uncond, abs=0.025)


def test_resume_of_a_text_run_continues_exactly(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(UNET, config(max_steps=4, save_every=2, sample_every=100), straight, text_config=TEXT)
    train(UNET, config(max_steps=2, save_every=2, sample_every=100), split, text_config=TEXT)
    resume(split, max_steps=4)
    a, b = Pipeline.load(straight, "cpu"), Pipeline.load(split, "cpu")
    for name in ("unet", "text_encoder"):
        x, y = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert all(torch.equal(x[k], y[k]) for k in x), name
    assert a.tokenizer.to_dict() == b.tokenizer.to_dict()


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, colour_folder):
    out = tmp_path_factory.mktemp("text")
    # pooled_dim: any value turns it on, train sets it to the text encoder's width
    pooled = dataclasses.replace(UNET, pooled_dim=1, mask_context_padding=True)
    run = config(data=str(colour_folder), lr=3e-3, max_steps=20, save_every=20, sample_every=20, ema_decay=0.5)
    train(pooled, run, out, text_config=TEXT)
    return out


def test_a_text_run_trains_the_encoder_and_the_unet_reads_it(text_run, colour_folder):
    """Mechanics only: whether conditioning is learned well is measured by `t2i eval prompts`
    on real runs (a tiny model needs far more steps to use its captions than a test can take)."""
    pipe = Pipeline.load(text_run, "cpu")
    assert pipe.unet.config.pooled_dim == TEXT.width and pipe.tokenizer.unknown_words("a red picture") == []
    assert set(pipe.encode_prompts(["red"])) == {"context", "pooled", "context_mask"}
    torch.manual_seed(0)  # train() builds its networks right after this seed
    fresh = build_components(read_config(text_run))
    moved = [name for name, p in pipe.text_encoder.named_parameters()
             if not torch.equal(p, fresh["text_encoder"].state_dict()[name])]
    assert len(moved) == len(list(pipe.text_encoder.parameters()))  # every encoder weight got gradients
    q, q0 = pipe.text_encoder.blocks[0].attention.to_q.weight, fresh["text_encoder"].blocks[0].attention.to_q.weight
    assert (q - q0).abs().max() < 0.1  # 20 Adam steps of lr ≤ 3e-3 from the same init (std 0.18)
    images = torch.stack([ImageFolder(colour_folder, 16)[i] for i in range(4)])
    t = torch.full((4,), 500)
    with torch.no_grad():
        red, blue = (pipe.unet(images, t, **pipe.encode_prompts([c] * 4)) for c in ("red", "blue"))
    assert not torch.allclose(red, blue)


def test_the_sample_grid_of_a_text_run_is_what_the_pipeline_draws(text_run):
    """Guided by the empty caption, from seeds seed + i: the grid is the images generation makes."""
    grid = text_run / "samples" / "step_000020.png"
    parameters = read_parameters(grid)
    assert parameters["cfg"] == 5.0 and parameters["sampler"] == "ddim" and len(parameters["prompts"]) == 4
    images = Pipeline.load(text_run, "cpu")(parameters["prompts"], sampler="ddim", steps=parameters["steps"],
                                            cfg=parameters["cfg"], seed=parameters["seed"], progress=False)
    assert np.array_equal(np.asarray(Image.open(grid).convert("RGB")), np.asarray(make_grid(images)))


def test_an_existing_run_is_not_overwritten(trained):
    with pytest.raises(UserError, match="already holds a training run: resume it"):
        train(UNET, config(max_steps=1), trained)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    """A stopped session sends SIGTERM: the loop finishes its step, saves, and says how to resume."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    argv = [sys.executable, "-m", "t2i", "train", "--out", str(out), "--max-steps", "100000", "--save-every", "5",
            "--sample-every", "100000", "--channels", "16", "--channel-mult", "1", "2", "--num-res-blocks", "1",
            "--image-size", "16", "--batch-size", "4", "--device", "cpu"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "training" / "latest").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    step = read_state(out)["step"]
    assert f"stopped at step {step}" in stdout and step >= 5
