"""The command line, run in-process as a user would: outputs written, bad input in one line."""

import re
import shutil

import pytest
from PIL import Image

from t2i.checkpoints import read_config
from t2i.cli import main
from t2i.images import read_parameters

TINY = ["--channels", "16", "--channel-mult", "1", "2", "--num-res-blocks", "1", "--attention-levels", "1",
        "--image-size", "16", "--batch-size", "8", "--device", "cpu"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--out", str(out), "--max-steps", "12", "--save-every", "6", "--sample-every", "12",
                 "--timesteps", "50", *TINY]) == 0
    return out


def one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("t2i: error:") and match in err, err


def test_train_then_sample_writes_a_grid_with_its_parameters(model_dir, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["sample", "--model", str(model_dir), "--sampler", "ddim", "--steps", "5", "--num", "4",
                 "--seed", "3", "--out", str(out), "--device", "cpu"]) == 0
    with Image.open(out) as image:
        assert image.size == (2 * 18 + 2, 2 * 18 + 2)
    params = read_parameters(out)
    assert params["sampler"] == "ddim" and params["seed"] == 3 and params["steps"] == 5
    assert params["spacing"] == "leading"  # the spacing that ran, not the missing option


def test_a_samplers_own_options_are_given_as_name_value_and_recorded(model_dir, tmp_path, capsys):
    out = tmp_path / "langevin.png"
    assert main(["sample", "--model", str(model_dir), "--sampler", "langevin", "--steps", "3", "--num", "1",
                 "--option", "langevin_steps=1", "--option", "step_size=0.5", "--out", str(out),
                 "--device", "cpu"]) == 0
    assert read_parameters(out)["sampler_options"] == {"langevin_steps": 1, "step_size": 0.5}
    capsys.readouterr()
    one_line_error(capsys, ["sample", "--model", str(model_dir), "--sampler", "langevin", "--option", "snr=0.1"],
                   "snr")
    with pytest.raises(SystemExit) as exit:  # argparse's own error, in one line
        main(["sample", "--model", str(model_dir), "--option", "langevin_steps"])
    err = capsys.readouterr().err.strip()
    assert exit.value.code == 2 and "\n" not in err and "is not NAME=VALUE" in err, err


def test_a_convnext_unet_trains_and_samples(tmp_path):
    run, out = tmp_path / "convnext", tmp_path / "grid.png"
    assert main(["train", "--out", str(run), "--max-steps", "2", "--sample-every", "2", "--timesteps", "20",
                 "--block", "convnext", *TINY]) == 0
    assert read_config(run)["unet"]["block_type"] == "convnext"
    assert main(["sample", "--model", str(run), "--sampler", "ddim", "--steps", "2", "--num", "1",
                 "--out", str(out), "--device", "cpu"]) == 0 and out.is_file()


def test_a_run_resumed_by_the_other_command_is_told_which_one(model_dir, capsys):
    one_line_error(capsys, ["train-vae", "--out", str(model_dir), "--resume"],
                   f"is a diffusion run: resume it with t2i train --out {model_dir} --resume")


def test_train_resume_takes_the_settings_given_whatever_their_value(model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(model_dir, run)
    assert main(["train", "--out", str(run), "--resume"]) == 0  # the run's own max_steps, not the option's default
    assert "already at step 12 of 12" in capsys.readouterr().out
    one_line_error(capsys, ["train", "--out", str(run), "--resume", "--max-steps", "14", "--batch-size", "4"],
                   "a resumed run keeps its batch_size")
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "13", "--lr", "1e-3"]) == 0
    assert "trained to step 13" in capsys.readouterr().out and read_config(run)["train"]["lr"] == 1e-3
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "14", "--lr", "5e-4"]) == 0  # the default
    assert read_config(run)["train"]["lr"] == 5e-4 and read_config(run)["step"] == 14


def test_noise_shows_the_forward_process(tmp_path, capsys):
    from t2i.visualize import forward_timesteps

    source = tmp_path / "in.png"
    Image.new("RGB", (50, 40), (200, 30, 30)).save(source)  # far from N(0, 1): red is +0.57, blue -0.76
    out = tmp_path / "forward.png"
    assert main(["noise", str(source), "--out", str(out), "--size", "32"]) == 0
    printed = capsys.readouterr().out
    mean, std = (float(re.search(rf"{name} (-?[\d.]+)", printed).group(1)) for name in ("mean", "std"))
    assert abs(mean) < 0.05 and abs(std - 1) < 0.05 and out.is_file()  # ᾱ_T ≈ 4e-5: the image is gone at T
    # a shorter process is shown at the same fractions, its last step included
    assert forward_timesteps(1000) == [0, 50, 100, 200, 400, 600, 800, 999]
    assert forward_timesteps(100) == [0, 5, 10, 20, 40, 60, 80, 99]


def test_the_forward_process_figure_draws_a_bounded_number_of_pixels_for_its_histogram(monkeypatch):
    import torch

    from t2i.diffusion import Diffusion
    from t2i.visualize import HISTOGRAM_VALUES, forward_process_figure

    diffusion, sizes = Diffusion.from_schedule("linear", 1000), []
    q_sample = diffusion.q_sample
    monkeypatch.setattr(diffusion, "q_sample", lambda x, *rest: sizes.append(x.numel()) or q_sample(x, *rest))
    stats = forward_process_figure(torch.zeros(3, 512, 512), diffusion)[1]
    assert sizes[-1] <= HISTOGRAM_VALUES and abs(stats["std"] - 1) < 0.01  # 5 draws of 786k pixels, not 64
    forward_process_figure(torch.zeros(3, 8, 8), diffusion)
    assert sizes[-1] == 64 * 3 * 8 * 8  # a small image keeps all its draws


def test_eval_nll_prints_bits_per_dim(model_dir, capsys):
    assert main(["eval", "nll", "--model", str(model_dir), "--num-images", "4", "--terms", "5",
                 "--device", "cpu"]) == 0
    assert "bits/dim" in capsys.readouterr().out


def test_bad_input_gets_one_line(model_dir, tmp_path, capsys):
    one_line_error(capsys, ["sample", "--model", str(model_dir), "--sampler", "nope"], "unknown sampler 'nope'")
    one_line_error(capsys, ["sample", "--model", str(model_dir), "--steps", "51", "--device", "cpu"],
                   "between 1 and the model's 50 training timesteps")
    one_line_error(capsys, ["sample", "--model", str(tmp_path)], "has no config.json")
    one_line_error(capsys, ["train", "--out", str(tmp_path / "r"), "--schedule", "quadratic", *TINY],
                   "unknown schedule 'quadratic'")
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, ["train", "--out", str(tmp_path / "r"), "--data", str(tmp_path / "empty"), *TINY],
                   "no images in")
    one_line_error(capsys, ["train", "--out", str(tmp_path / "r"), "--image-size", "18",
                            "--channel-mult", "1", "2", "2"], "divisible by 4")
    one_line_error(capsys, ["noise", str(tmp_path / "missing.png")], "does not exist")


def test_info_prints_the_parameters_a_png_carries(model_dir, tmp_path, capsys):
    from PIL import PngImagePlugin

    theirs = PngImagePlugin.PngInfo()
    infotext = ("a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64, "
                "Model hash: 6ce0161689, VAE: vae-ft-mse-840000")
    theirs.add_text("parameters", infotext)
    Image.new("RGB", (8, 8)).save(tmp_path / "a1111.png", pnginfo=theirs)
    assert main(["info", str(tmp_path / "a1111.png")]) == 0
    assert capsys.readouterr().out == infotext + "\n"  # word for word, the fields we do not read too
    grid = tmp_path / "grid.png"
    assert main(["sample", "--model", str(model_dir), "--steps", "2", "--num", "2", "--seed", "4", "--out", str(grid),
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["info", str(grid)]) == 0
    assert "Sampler: ddpm" in (out := capsys.readouterr().out) and "Seed: 4" in out
    assert main(["info", str(grid), "--json"]) == 0
    assert '"num": 2' in capsys.readouterr().out
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    one_line_error(capsys, ["info", str(tmp_path / "plain.png")], "carries no generation parameters")
