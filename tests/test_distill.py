"""Progressive distillation (`t2i train --distill`): the nested grids and the target against a Gaussian oracle,
a tiny latent text-to-image teacher distilled for two rounds into students that generate with their defaults,
exact resume in a round and across its end, and the refusals."""

import copy
import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from t2i.checkpoints import build_components, export_model, versioned_config, model_config, read_config, save_model
from t2i.cli import main
from t2i.diffusion import Diffusion
from t2i.errors import UserError
from t2i.images import make_grid, read_parameters
from t2i.models.unet import UNetConfig
from t2i.models.vae import AutoencoderKL, VAEConfig
from t2i.pipeline import Pipeline
from t2i.samplers.ancestral import sample_ddim
from t2i.samplers.base import Grid
from t2i.text.clip import TextEncoderConfig
from t2i.text.words import WordTokenizer
from t2i.training.diffusion import TrainConfig, train
from t2i.training.distill import (DistillConfig, distill, distillation_target, grid_scales, resume, round_grids,
                                  teacher_steps, truncated_snr)
from t2i.training.run_folder import current_checkpoint

VAE = VAEConfig(block_channels=(16, 32), latent_channels=4, norm_groups=8)  # f = 2: 16×16 images, 8×8 latents
UNET = UNetConfig(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_dim=8,
                  pooled_dim=1)
TEXT = TextEncoderConfig(max_length=16, width=32, layers=1, heads=2, intermediate_size=64)


# -- (a) the grids and the target, against the maths ---------------------------------------------------------------
@pytest.mark.parametrize("convention", [{}, {"set_alpha_to_one": False, "steps_offset": 1}])
def test_one_student_step_to_the_target_lands_where_two_teacher_steps_land(oracle, convention):
    """With the exact ε of Gaussian data as the teacher, a student that predicts x̃ takes `sample_ddim`'s one step
    from z_t exactly where `sample_ddim`'s two teacher steps land, on every level of every round's grid, the last
    (onto x_0, or onto ᾱ_0 for SD's convention) included."""
    diffusion = Diffusion.from_schedule("scaled_linear", 1000, "v")
    teacher = oracle(diffusion, 0.5, 0.7)
    for steps in (1, 2, 4, 32):
        grid, teacher_grid = round_grids(diffusion, steps, convention)
        assert len(grid) == steps and len(teacher_grid) == 2 * steps and grid.timesteps[0] == 999  # from pure noise
        assert torch.equal(teacher_grid.timesteps[::2], grid.timesteps)
        assert grid.sigmas[-1] == (diffusion.sigmas[0] if convention else 0)
        i = torch.arange(steps)
        z = torch.randn(steps, 3, 4, 4, generator=torch.Generator().manual_seed(steps), dtype=torch.float64) * 3
        z_end = teacher_steps(teacher, z, i, teacher_grid)
        target = distillation_target(z, z_end, grid_scales(grid.sigmas[i], z), grid_scales(grid.sigmas[i + 1], z))
        for n in range(steps):
            two = Grid(teacher_grid.timesteps[2 * n:2 * n + 2], teacher_grid.sigmas[2 * n:2 * n + 3])
            landed = sample_ddim(teacher, z[n:n + 1], two, progress=False)
            assert torch.allclose(z_end[n:n + 1], landed, rtol=0, atol=1e-10)

            def student(x, t, n=n):  # the ε of a network whose x̂_0 is x̃
                return diffusion.predict_eps(x, t, target[n:n + 1])

            one = Grid(grid.timesteps[n:n + 1], grid.sigmas[n:n + 2])
            assert torch.allclose(sample_ddim(student, z[n:n + 1], one, progress=False), landed, rtol=0, atol=1e-5)
    assert truncated_snr(torch.tensor([0.1, 1.0, 10.0])).tolist() == pytest.approx([100.0, 1.0, 1.0])


@pytest.mark.parametrize("prediction", ["epsilon", "v", "flow"])
def test_model_x0_is_the_x0_of_the_models_eps(prediction):
    diffusion = Diffusion.from_schedule("scaled_linear", 1000, prediction)
    x, t = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.tensor([0, 500, 999])

    def network(x, t):
        return torch.sin(x) + t.reshape(-1, 1, 1, 1) / 1000

    expected = diffusion.predict_x0(x, t, diffusion.model_eps(network, x, t))
    assert torch.allclose(diffusion.model_x0(network, x, t), expected, atol=1e-9)


# -- (b) a tiny teacher distilled --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher(tmp_path_factory, colour_folder):
    """A tiny latent text-to-image model of v-prediction on the scaled-linear schedule, as `emoji` is, trained a little
    on an autoencoder that is not (the distillation's mechanics need no good one)."""
    vae = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    save_model(vae, {"vae": AutoencoderKL(VAE)}, versioned_config(vae=VAE.to_dict(), image_size=16))
    out = tmp_path_factory.mktemp("teacher")
    train(UNET, TrainConfig(data=str(colour_folder), image_size=16, batch_size=8, max_steps=30, lr=3e-3,
                            warmup_steps=5, prediction_type="v", schedule="scaled_linear", vae=str(vae),
                            save_every=30, sample_every=1000, probe_every=0, num_samples=1, device="cpu"),
          out, text_config=TEXT)
    return out


def config(model, data, **changes) -> DistillConfig:
    settings = dict(teacher=str(model), data=str(data), start_steps=2, final_steps=1, steps_per_round=3,
                    batch_size=8, lr=1e-3, warmup_steps=2, save_every=3, sample_every=100, log_every=1,
                    num_samples=2, device="cpu")
    return DistillConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def distilled(teacher, colour_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("distilled") / "run"
    assert distill(config(teacher, colour_folder), out).step == 6
    return out


def tensors(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_two_rounds_make_two_students_that_generate_with_their_defaults(distilled, teacher, tmp_path):
    with (distilled / "loss.csv").open() as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses) == 6 and all(math.isfinite(loss) and loss > 0 for loss in losses)
    students = {steps: distilled / "students" / f"steps-{steps}" for steps in (2, 1)}
    for steps, folder in students.items():
        saved = read_config(folder)
        assert saved["inference"] == {"sampler": "ddim", "steps": steps, "spacing": "trailing", "cfg": 1.0}
        assert saved["distillation"] == {"teacher": str(teacher.resolve()), "guidance_scale": 5.0, "steps": steps,
                                         "spacing": "trailing"}
        assert saved["step"] == 3 * (3 - steps) and saved["diffusion"] == read_config(teacher)["diffusion"]
        pipe = Pipeline.load(folder, "cpu")
        image = pipe("red", seed=0, progress=False, output_type="pt")
        assert image.shape == (1, 3, 16, 16) and torch.isfinite(image).all()
        with pytest.raises(UserError, match="distilled with guidance 5 in its network: it takes cfg 1 only"):
            pipe("red", cfg=3.0, progress=False)
    # the first student is the second round's teacher, and the run's model is the last student
    checkpoint = current_checkpoint(distilled)
    raw = tensors(checkpoint / "model.safetensors")
    first = tensors(students[2] / "unet.safetensors")
    assert equal({key.removeprefix("teacher."): value for key, value in raw.items() if key.startswith("teacher.")},
                 first)
    assert equal(tensors(distilled / "unet.safetensors"), tensors(students[1] / "unet.safetensors"))
    assert not equal(first, tensors(teacher / "unet.safetensors"))
    assert not equal(first, tensors(distilled / "unet.safetensors"))
    grid = distilled / "samples" / "step_000006.png"  # the last student's, as generation draws them by default
    parameters = read_parameters(grid)
    assert (parameters["steps"], parameters["spacing"], parameters["cfg"]) == (1, "trailing", 1.0)
    images = Pipeline.load(distilled, "cpu")(parameters["prompts"], seed=parameters["seed"], progress=False)
    assert np.array_equal(np.asarray(Image.open(grid).convert("RGB")), np.asarray(make_grid(images)))
    path = tmp_path / "apple.png"
    assert main(["generate", "--model", str(students[1]), "red apple", "--seed", "0", "--out", str(path)]) == 0
    with Image.open(path) as image:
        assert image.size == (16, 16) and np.asarray(image).std() > 0


def test_export_takes_a_models_students_along_in_fp16_with_its_paths_cut_to_names(distilled, teacher, tmp_path):
    model = tmp_path / "toy"
    shutil.copytree(teacher, model)
    shutil.copytree(distilled / "students", model / "students")
    out = export_model(model, tmp_path / "shipped", inference={"steps": 20})
    assert read_config(out)["inference"]["steps"] == 20 and sorted(Pipeline.load(out, "cpu").students) == [1, 2]
    for steps in (1, 2):
        shipped = out / "students" / f"steps-{steps}"
        assert {tensor.dtype for tensor in tensors(shipped / "unet.safetensors").values()} == {torch.float16}
        saved = read_config(shipped)
        assert saved["inference"] == read_config(distilled / "students" / f"steps-{steps}")["inference"]
        assert saved["distillation"]["teacher"] == teacher.name  # not a path of the machine it was made on
        assert not any(str(value).startswith("/") for value in saved["train"].values())
    with pytest.warns(UserWarning, match="a student of the model exported there before"):
        export_model(teacher, out)  # another model onto the same folder: the old students are not its
    assert Pipeline.load(out, "cpu").students == {} and not (out / "students" / "steps-1").exists()


# -- (c) exact resume -----------------------------------------------------------------------------------------------
def test_a_run_stopped_in_a_round_and_at_its_end_resumes_exactly(distilled, teacher, colour_folder, tmp_path):
    stopped = tmp_path / "stopped"
    distill(config(teacher, colour_folder, max_steps=2), stopped)  # in the first round
    assert resume(stopped, max_steps=3).step == 3  # at its end: the next round begins on resuming
    assert resume(stopped, max_steps=4).step == 4  # in the second
    assert resume(stopped, max_steps=6).step == 6
    for name in ("model.safetensors", "optimizer.safetensors", "unet.safetensors"):
        a, b = (tensors(current_checkpoint(run) / name) for run in (distilled, stopped))
        assert equal(a, b), name
    for steps in (2, 1):
        a, b = (tensors(run / "students" / f"steps-{steps}" / "unet.safetensors") for run in (distilled, stopped))
        assert equal(a, b), steps


# -- (d) bad input ----------------------------------------------------------------------------------------------------
def tiny_model(folder, text: bool, vae: bool) -> str:
    """A model folder of random networks: unconditional, or of pixels."""
    unet = UNetConfig(model_channels=8, channel_mult=(1,), num_res_blocks=1, attention_levels=(), norm_groups=4,
                      context_dim=TEXT.width if text else None)
    tokenizer = WordTokenizer.build(["red"], max_length=TEXT.max_length) if text else None
    extra = {"vae": VAE.to_dict()} if vae else {}
    settings = model_config(unet, {"schedule": "linear", "num_timesteps": 1000}, TEXT if text else None, tokenizer,
                            image_size=16, **extra)
    save_model(folder, build_components(settings), settings)
    return str(folder)


def test_a_model_hands_a_call_for_its_students_steps_to_the_student(distilled, teacher, tmp_path, monkeypatch):
    """A teacher with its students beside it (students/steps-N) draws a call for N steps that leaves sampler, cfg and
    grid to it with the student, exactly as the student's own folder does, and names the student in the image's
    parameters by a name that loads it; any other call stays the teacher's."""
    model = tmp_path / "toy"
    shutil.copytree(teacher, model)
    shutil.copytree(distilled / "students", model / "students")
    monkeypatch.setattr("t2i.checkpoints.shipped_models", lambda: {"toy": model})
    pipe = Pipeline.load("toy", "cpu")
    assert sorted(pipe.students) == [1, 2]
    for steps in (1, 2):
        own = Pipeline.load(distilled / "students" / f"steps-{steps}", "cpu")("red", seed=3, progress=False)[0]
        routed = pipe("red", steps=steps, seed=3, progress=False)[0]
        assert np.array_equal(np.asarray(own), np.asarray(routed))
        assert routed.info["t2i"]["model"] == f"toy/students/steps-{steps}"
        assert Pipeline.load(routed.info["t2i"]["model"], "cpu").students == {}  # the name loads the student
    # the cfg folded into the student, sent as a form showing the default sends it, is the student's call too
    own = Pipeline.load(distilled / "students" / "steps-2", "cpu")("red", seed=3, progress=False, output_type="pt")
    assert torch.equal(pipe("red", steps=2, cfg=5.0, seed=3, progress=False, output_type="pt"), own)
    pipe.vae = copy.deepcopy(pipe.vae)  # as `load_vae` replaces it: the student decodes with the new one too
    assert pipe.student(2).vae is pipe.vae
    plain = Pipeline.load(teacher, "cpu")
    for call in ({"steps": 2, "cfg": 3.0}, {"steps": 2, "sampler": "ddim"}, {"steps": 3}, {},
                 {"steps": 2, "negative_prompt": "blue"}, {"steps": 2, "guidance_rescale": 0.5},
                 {"steps": 2, "eta": 0.5}, {"steps": 2, "sampler_options": {"eta": 0.5}}):
        mine, teachers = (p("red", seed=3, progress=False, output_type="pt", **call) for p in (pipe, plain))
        assert torch.equal(mine, teachers), call
    out = tmp_path / "one-step.png"
    assert main(["generate", "--model", str(model), "red", "--steps", "1", "--seed", "3", "--out", str(out)]) == 0
    assert read_parameters(out)["model"] == str(model / "students" / "steps-1")


def test_bad_input_is_refused_in_one_line(teacher, distilled, colour_folder, tmp_path):
    for changes, message in (
            ({"start_steps": 3, "final_steps": 2}, "final_steps times a power of two"),
            ({"start_steps": 1, "final_steps": 2}, "final_steps times a power of two"),
            ({"max_steps": 7}, "past the last round's end: 2 rounds of 3 steps make 6"),
            ({"p_uncond": 0.1}, "p_uncond does not apply to distillation"),
            ({"cooldown_steps": 2}, "warmup_steps 2 and cooldown_steps 2 are each round's, and together pass its 3"),
            ({"teacher": " "}, "teacher is empty")):
        with pytest.raises(UserError, match=message):
            config(teacher, colour_folder, **changes)
    for changes, message in (
            ({"teacher": str(colour_folder)}, "has no config.json: not a t2i model folder"),
            ({"teacher": str(tmp_path / "nowhere")}, "no model"),
            ({"teacher": tiny_model(tmp_path / "unconditional", False, True)}, "is an unconditional model"),
            ({"teacher": tiny_model(tmp_path / "pixels", True, False)}, "works on pixels: distillation takes a latent"),
            ({"start_steps": 512}, "start_steps 512 is too many"),
            ({"image_size": 32}, "image_size is the teacher's, 16"),
            ({"teacher": str(distilled / "students" / "steps-2"), "cfg": 3.0}, "is distilled already"),
            ({"teacher": str(distilled / "students" / "steps-2"), "start_steps": 2},
             "is a student of 2 steps: it teaches students of 1 \\(--distill-start-steps 1\\), not 2")):
        with pytest.raises(UserError, match=message) as error:
            distill(config(teacher, colour_folder, **changes), tmp_path / "bad")
        assert "\n" not in str(error.value)
    student = Pipeline.load(distilled / "students" / "steps-1", "cpu")
    with pytest.raises(UserError, match="distilled with guidance against the empty prompt in its network: it takes no "
                                        "negative prompt"):
        student("red", negative_prompt="blue", progress=False)
    with pytest.raises(UserError, match="is a distilled student: .* its export keeps them \\(leave out --cfg\\)"):
        export_model(distilled / "students" / "steps-1", tmp_path / "exported", inference={"cfg": 5.0})
    with pytest.raises(UserError, match="is a distillation run"):
        from t2i.training.diffusion import resume as resume_training
        resume_training(distilled)


def test_the_command_line_distils_resumes_and_refuses(teacher, colour_folder, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["train", "--data", str(colour_folder), "--batch-size", "4", "--sample-every", "100", "--device", "cpu"]
    distil = ["--distill", str(teacher), "--distill-start-steps", "1", "--distill-steps-per-round", "2",
              "--warmup-steps", "1"]
    assert main([*common, *distil, "--max-steps", "1", "--out", str(run)]) == 0
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "2"]) == 0
    assert json.loads((run / "students" / "steps-1" / "config.json").read_text())["step"] == 2
    capsys.readouterr()
    for arguments, message in (
            ([*distil, "--channels", "8"], "--channels do not apply to distillation (--distill)"),
            ([*distil, "--image-size", "32"], "--image-size do not apply to distillation"),
            ([*distil, "--init", str(teacher)], "give one of them"),
            (["--distill-cfg", "3"], "--distill-cfg set a distillation: give its teacher with --distill TEACHER"),
            ([*distil, "--distill-final-steps", "2"], "final_steps times a power of two"),
            ([*distil, "--warmup-steps", "3"], "warmup_steps 3 and cooldown_steps 0 are each round's")):
        out = tmp_path / "bad"
        assert main([*common, *arguments, "--out", str(out)]) == 2, arguments
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, err
        shutil.rmtree(out, ignore_errors=True)
    assert main(["train", *distil, "--out", str(tmp_path / "bad")]) == 2
    assert "give their folder with --data" in capsys.readouterr().err
