"""Fine-tuning Stable Diffusion (`t2i train --init`) on a tiny random SD v1 (tests/tiny_sd.py): LoRA adapters
that learn, saved as files diffusers loads to the images t2i makes; the whole U-Net; exact resume; gradient
checkpointing; the command line and its refusals."""

import csv
import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from t2i.checkpoints import diffusion_from_config, load_components, shipped_models
from t2i.cli import main
from t2i.convert.stable_diffusion import convert, load_sd_model
from t2i.errors import UserError
from t2i.models.lora import LoRA, LoRAStack, LowRankAdapters
from t2i.pipeline import Pipeline
from t2i.training import finetune as finetuning
from t2i.training.finetune import FinetuneConfig, finetune, lora_targets, load_base, resume
from t2i.training.run_folder import current_checkpoint

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("peft")
from tiny_sd import load_reference, tiny_sd_folder  # noqa: E402  (needs diffusers)

PROMPT = "a red picture"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_sd_folder(tmp_path_factory.mktemp("finetune_sd"))


def config(base, data, **changes) -> FinetuneConfig:
    settings = dict(init=str(base), data=str(data), batch_size=8, max_steps=6, lr=1e-2, warmup_steps=5,
                    save_every=100, sample_every=1000, log_every=5, probe_every=0, num_samples=1, device="cpu")
    return FinetuneConfig(**{**settings, **changes})


def saved(path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), "pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}, f.metadata()


def weights(*networks) -> list[dict[str, torch.Tensor]]:
    return [{key: value.clone() for key, value in network.state_dict().items()} for network in networks]


@pytest.fixture(scope="module")
def lora_run(base, colour_folder, tmp_path_factory):
    """40 steps of LoRA (rank 4, α 8, on the U-Net and the text encoder); the base networks the run trained
    against, and their weights as loaded."""
    out = tmp_path_factory.mktemp("lora") / "run"
    loaded = []

    def keep(path):
        loaded.append(load_base(path))
        loaded.append(weights(loaded[0].unet, loaded[0].text_encoder, loaded[0].vae))
        return loaded[0]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(finetuning, "load_base", keep)
        finetune(config(base, colour_folder, max_steps=40, lora_rank=4, lora_alpha=8.0, lora_text_encoder=True,
                        probe_every=10, probe_examples=32), out)
    return out, *loaded


def test_a_lora_learns_and_leaves_the_base_as_it_was(lora_run):
    out, trained_base, before = lora_run
    with (out / "loss.csv").open() as f:
        rows = list(csv.DictReader(f))
    losses = [float(row["loss"]) for row in rows]
    probes = [float(row["train_fixed"]) for row in rows if row["train_fixed"]]
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2]) and probes[-1] < 0.9 * probes[0]
    after = weights(trained_base.unet, trained_base.text_encoder, trained_base.vae)
    assert all(torch.equal(value, was[key]) for now, was in zip(after, before) for key, value in now.items())
    raw = load_file(str(current_checkpoint(out) / "model.safetensors"))
    assert {key.split(".")[0] for key in raw} == {"adapters", "ema"}  # nothing else was trained
    for name in ("lora.safetensors", "pytorch_lora_weights.safetensors", "samples/step_000040.png", "loss.png"):
        assert (out / name).is_file(), name
    with pytest.raises(UserError, match="holds a LoRA of"):
        load_components(out)
    moved = out.parent / "moved"  # a run whose base is gone says how to give it
    shutil.copytree(out, moved, ignore=shutil.ignore_patterns("training", "cache", "samples"))
    settings = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**settings, "lora": {"base": str(out.parent / "gone")}}))
    with pytest.raises(UserError, match=r"which is not there any more: give the base .* --lora .*lora.safetensors"):
        Pipeline.load(moved, device="cpu")


def test_diffusers_loads_the_lora_to_the_images_t2i_makes(base, lora_run):
    """diffusers' `load_lora_weights` with the run's diffusers file, and t2i with its kohya file (the run folder
    as the model, and the base with --lora): the same images within 1e-3, DDIM, the same latents."""
    out = lora_run[0]
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    settings = dict(negative_prompt="blue", latents=latents, output_type="pt")
    reference = load_reference(base)
    plain = reference(PROMPT, height=16, width=16, num_inference_steps=4, guidance_scale=7.5, **settings).images
    reference.load_lora_weights(str(out / "pytorch_lora_weights.safetensors"))
    expected = reference(PROMPT, height=16, width=16, num_inference_steps=4, guidance_scale=7.5, **settings).images
    assert (expected - plain).abs().max() > 0.05  # the LoRA changes the images
    for ours in (Pipeline.load(out, device="cpu"), Pipeline.load(base, device="cpu", loras=[out / "lora.safetensors"])):
        assert "lora" in ours.loras
        image = ours(PROMPT, steps=4, sampler="ddim", cfg=7.5, progress=False, **settings)
        assert (image - expected).abs().max() * 2 < 1e-3  # in [-1, 1]


def test_full_finetuning_makes_a_model_folder_and_resumes_exactly(base, colour_folder, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    finetune(config(base, colour_folder, max_steps=4, lr=1e-4), straight)
    finetune(config(base, colour_folder, max_steps=2, lr=1e-4), stopped)
    assert resume(stopped, max_steps=4).step == 4
    for name in ("model.safetensors", "unet.safetensors"):
        a, b = (load_file(str(current_checkpoint(run) / name)) for run in (straight, stopped))
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), name
    networks = load_sd_model(base)[0]
    for name in ("vae", "text_encoder"):
        saved = load_file(str(straight / f"{name}.safetensors"))
        assert all(torch.equal(saved[key], value) for key, value in networks[name].state_dict().items()), name
    unet = load_file(str(straight / "unet.safetensors"))
    assert not all(torch.equal(unet[key], value) for key, value in networks["unet"].state_dict().items())
    image = Pipeline.load(straight, device="cpu")(PROMPT, steps=2, seed=0, progress=False, output_type="pt")
    assert image.shape == (1, 3, 16, 16) and torch.isfinite(image).all()
    convert(straight, tmp_path / "sd.safetensors", to="original")  # and in SD's own file, for other tools
    assert torch.equal(load_sd_model(tmp_path / "sd.safetensors")[0]["unet"].state_dict()["conv_in.weight"],
                       unet["conv_in.weight"])


def test_a_lora_run_stopped_and_resumed_ends_as_one_that_ran_straight(base, colour_folder, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    lora = dict(lora_rank=2, lora_text_encoder=True, mixed_precision="bf16", gradient_checkpointing=True)
    finetune(config(base, colour_folder, keep_every=3, **lora), straight)
    finetune(config(base, colour_folder, **{**lora, "max_steps": 3}), stopped)
    resume(stopped, max_steps=6)
    snapshot = straight / "snapshots" / "step_000003"  # a LoRA kept on the way is a model as the run's is
    assert (snapshot / "pytorch_lora_weights.safetensors").is_file() and "lora" in Pipeline.load(snapshot).loras
    a, b = (load_file(str(current_checkpoint(run) / "model.safetensors")) for run in (straight, stopped))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    for name in ("lora.safetensors", "pytorch_lora_weights.safetensors"):  # (the header's order is safetensors')
        (a, a_header), (b, b_header) = (saved(run / name) for run in (straight, stopped))
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a) and a_header == b_header


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(base):
    model = load_base(base)
    unet, text_encoder = model.unet.requires_grad_(True), model.text_encoder
    networks = {"unet": unet, "text_encoder": text_encoder}
    torch.manual_seed(0)
    adapters = LowRankAdapters(networks, lora_targets(unet, None), 2, 2.0)
    with torch.no_grad():
        for parameter in adapters.parameters():
            parameter.normal_()  # B = 0 would leave A without a gradient
    LoRAStack(networks).add(LoRA("trained", adapters.updates()))
    diffusion = diffusion_from_config(model.config)
    generator = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 77, 64, generator=generator)
    results = []
    for checkpointing in (False, True):
        unet.gradient_checkpointing = checkpointing
        unet.zero_grad(), adapters.zero_grad()
        loss = diffusion.training_loss(unet, x0, torch.tensor([10, 900]), noise, context=context).mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in [*unet.parameters(), *adapters.parameters()]]))
    (loss, grads), (loss_checkpointed, grads_checkpointed) = results
    assert torch.equal(loss, loss_checkpointed)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_checkpointed))
    assert all(g.abs().sum() > 0 for g in grads[-len(list(adapters.parameters())):])


def test_the_memory_check_counts_what_trains(base, monkeypatch):
    """The whole U-Net needs its optimizer's and EMA's copies, LoRA those of its few adapters; gradient
    checkpointing needs fewer feature maps; weights already in the CPU's memory are not counted again."""
    from t2i.training import diffusion

    model = load_base(base)
    networks = {"unet": model.unet, "text_encoder": model.text_encoder}
    adapters = sum(p.numel() for p in LowRankAdapters(networks, lora_targets(model.unet, None), 4, 4).parameters())
    needed = []
    monkeypatch.setattr(diffusion, "check_fits", lambda nbytes, what, fix, device: needed.append((nbytes, what)))
    settings = config(base, "data", image_size=16)
    frozen = sum(p.numel() for p in [*model.vae.parameters(), *model.text_encoder.parameters()])
    for trained, checkpointing, loaded in ((None, False, False), (adapters, False, False), (adapters, True, False),
                                           (adapters, True, True)):
        diffusion.check_training_fits(model.unet.config, settings, model.vae, torch.device("cpu"), 8, trained,
                                      frozen, loaded, checkpointing)
    (full, _), (lora, what), (checkpointed, _), (loaded, _) = needed
    assert full > lora > checkpointed > loaded and "adapter parameters on a" in what
    assert full - lora == 16 * (sum(p.numel() for p in model.unet.parameters()) - adapters)


def test_the_command_line_fine_tunes_and_generates_and_refuses_bad_input(base, colour_folder, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["train", "--data", str(colour_folder), "--batch-size", "4", "--max-steps", "2", "--sample-every", "100",
              "--probe-every", "0", "--device", "cpu"]
    assert main([*common, "--init", str(base), "--out", str(run), "--lora-rank", "4"]) == 0
    images = []
    for model in (["--model", str(run)], ["--model", str(base), "--lora", str(run / "lora.safetensors")]):
        path = tmp_path / f"{len(images)}.png"
        assert main(["generate", PROMPT, *model, "--steps", "2", "--seed", "0", "--out", str(path)]) == 0
        with Image.open(path) as image:
            images.append((image.size, image.tobytes()))
    assert images[0] == images[1] and images[0][0] == (16, 16)
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "3"]) == 0
    capsys.readouterr()

    empty = tmp_path / "empty"
    empty.mkdir()
    for arguments, message in (
            (["--lora-rank", "4"], "give it with --init MODEL"),
            (["--init", str(colour_folder)], "is neither an SD single file (.safetensors, .ckpt), a diffusers"),
            (["--init", str(shipped_models()["shapes"])], "uses a word tokenizer"),  # ours, not SD's
            (["--init", str(base), "--lora-rank", "1000"], "lora_rank 1000 is larger than the 32 features"),
            (["--init", str(base), "--image-size", "32"], "training images in"),
            (["--init", str(base), "--image-size", "6"], "sides divisible by 4"),
            (["--init", str(base), "--channels", "8"], "--channels do not apply to fine-tuning"),
            (["--init", str(base), "--data", str(empty)], "no images in")):
        out = tmp_path / "bad"
        assert main([*common, *arguments, "--out", str(out)]) == 2, arguments
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, err
        shutil.rmtree(out, ignore_errors=True)
