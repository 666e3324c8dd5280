"""Bad input, as a hostile but ordinary user types it: every case is one line on stderr, exit code 2,
no traceback, no hang, and nothing allocated for an absurd size (each case runs under a time limit).

The command lines run in-process through `t2i.cli.main`, on tiny random models; the Python API's
misuses must raise `UserError` (a ValueError) with the same messages.
"""

import json
import math
import re
import signal
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.checkpoints import build_components, model_config, save_model
from t2i.cli import main
from t2i.errors import UserError
from t2i.models.unet import UNetConfig
from t2i.pipeline import Pipeline
from t2i.text.clip import TextEncoderConfig
from t2i.text.words import WordTokenizer

LIMIT_S = 60  # a case still running after this is a hang
TINY_TRAIN = ["--channels", "8", "--channel-mult", "1", "2", "--num-res-blocks", "1", "--attention-levels", "1",
              "--image-size", "8", "--batch-size", "4", "--max-steps", "2", "--device", "cpu", "--sample-every", "2",
              "--timesteps", "20", "--probe-every", "0"]


@pytest.fixture(autouse=True)
def time_limit():
    def hang(signum, frame):
        raise TimeoutError(f"still running after {LIMIT_S} s")
    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def tiny_png(width: int, height: int, extra: bytes = b"") -> bytes:
    """A PNG of declared size width×height (its pixel data need not match: PIL reads headers first)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\0" + b"\0" * 3 * min(width, 4) for _ in range(min(height, 4))))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + extra + png_chunk(b"IDAT", pixels) + \
        png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny random models (text-to-image and unconditional, pixel space), and bad files of every kind."""
    root = tmp_path_factory.mktemp("bad")
    tokenizer = WordTokenizer.build(["a red circle", "a blue square"], max_length=8)
    text = TextEncoderConfig(vocab_size=tokenizer.vocab_size, max_length=8, width=16, layers=1, heads=2,
                             intermediate_size=32, eos_token_id=tokenizer.eos_id)
    unet = UNetConfig(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_dim=8,
                      context_dim=16)
    diffusion = {"schedule": "linear", "num_timesteps": 20}
    for name, config in [("text", model_config(unet, diffusion, text, tokenizer, image_size=8,
                                                inference={"steps": 2})),
                         ("uncond", model_config(UNetConfig(model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                                            attention_levels=()), diffusion, image_size=8,
                                                 inference={"steps": 2}))]:
        torch.manual_seed(0)
        save_model(root / name, build_components(config), config)
    nan_model = root / "nan"
    config = json.loads((root / "uncond" / "config.json").read_text())
    components = build_components(config)
    with torch.no_grad():
        next(components["unet"].parameters()).fill_(float("nan"))
    save_model(nan_model, components, config)

    Image.new("RGB", (8, 8), (200, 20, 20)).save(root / "ok.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    (root / "random.ckpt").write_bytes(bytes(range(256)) * 8)
    (root / "notes.txt").write_text("not a model")
    (root / "bomb.png").write_bytes(tiny_png(100_000, 100_000))
    (root / "large.png").write_bytes(tiny_png(9000, 9000))  # past our limit, short of PIL's own bomb check
    (root / "chunk.png").write_bytes(tiny_png(8, 8, png_chunk(b"zTXt", b"t2i\0\0" + zlib.compress(b" " * 5 * 2**20))))
    (root / "folder").mkdir()
    data = root / "data"  # a dataset whose metadata names a file outside it
    data.mkdir()
    Image.new("RGB", (8, 8)).save(root / "outside.png")
    (data / "metadata.jsonl").write_text(json.dumps({"file_name": "../outside.png", "text": "x"}) + "\n")
    captions = root / "captions"  # a caption that is a number
    captions.mkdir()
    Image.new("RGB", (8, 8)).save(captions / "a.png")
    (captions / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": 5}) + "\n")
    broken = root / "broken"  # a dataset with a corrupt image among good ones
    broken.mkdir()
    for i in range(6):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(broken / f"{i}.png")
    (broken / "3.png").write_bytes(b"not an image")
    uncaptioned = root / "uncaptioned"  # captions under another field than 'text'
    uncaptioned.mkdir()
    Image.new("RGB", (8, 8)).save(uncaptioned / "a.png")
    (uncaptioned / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "caption": "a red circle"}) + "\n")
    (root / "diffusers-vae").mkdir()  # a diffusers folder's vae/, whose config.json is no t2i model's
    (root / "diffusers-vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    return root


def run(argv: list[str], capsys) -> tuple[int, list[str]]:
    """(exit code, the lines on stderr that are not progress bars or warnings)."""
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse
        code = exit.code
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines()
                  if line.strip() and "%|" not in line and not line.startswith("t2i: warning")]


def assert_one_line(argv: list[str], match: str, capsys) -> None:
    code, lines = run(argv, capsys)
    assert code == 2 and len(lines) == 1 and ": error: " in lines[0], (code, lines)
    assert match in lines[0], lines[0]
    assert "internal error" not in lines[0]


GENERATE = [
    (["--width", "100000"], "width must be a whole number from 1 to 16384, got 100000"),
    (["--width", "16384", "--height", "16384", "--num", "64"], "generating 64 images of 16384×16384 needs about"),
    (["--num", "1000000000"], "argument --num: must be positive and at most 4096, got 1000000000"),
    (["--width", "17"], "the size asked for is 17×8; this model needs sides divisible by 2"),
    (["--width", "abc"], "argument --width: invalid int value: 'abc'"),
    (["--steps", "0"], "argument --steps: must be positive, got 0"),
    (["--steps", "2.5"], "argument --steps: must be a positive whole number, got '2.5'"),
    (["--steps", "100000"], "steps must be a whole number from 1 to 10000"),
    (["--cfg", "nan"], "the guidance scale (cfg) must be a finite number from 0 to 1000.0, got nan"),
    (["--cfg", "1e308"], "the guidance scale (cfg) must be a finite number from 0 to 1000.0, got 1e+308"),
    (["--cfg", "-1"], "the guidance scale (cfg) must be a finite number from 0 to 1000.0, got -1.0"),
    (["--rescale", "2"], "guidance rescale must be a finite number from 0 to 1"),
    (["--sampler", "ddim", "--eta", "nan"], "eta must be a finite number from 0 to 1000, got nan"),
    (["--sampler", "ddim", "--eta", "-1"], "eta must be a finite number from 0 to 1000, got -1.0"),
    (["--sampler", "euler", "--eta", "0.5"], "sampler 'euler' takes no option eta"),
    (["--sampler", "nope"], "unknown sampler 'nope'"),
    (["--spacing", "bogus"], "argument --spacing: invalid choice: 'bogus'"),
    (["--strength", "0.5"], "strength is how far to noise an image"),
    (["--seed", "-1"], "seed must be a whole number from 0 to 9223372036854775807, got -1"),
    (["--seed", str(2**64)], f"seed must be a whole number from 0 to 9223372036854775807, got {2**64}"),
    (["--device", "cuda"], "there is no device 'cuda' here: choose auto or one of"),
    (["--device", "bogus"], "unknown device 'bogus'"),
    (["--dtype", "float64"], "argument --precision/--dtype: invalid choice: 'float64'"),
    (["--image", "{root}/missing.png"], "image '{root}/missing.png' does not exist"),
    (["--image", "{root}/folder"], "'{root}/folder' is a folder, not an image"),
    (["--image", "{root}/corrupt.png"], "cannot read image '{root}/corrupt.png': cannot identify image file"),
    # 10^10 pixels declared: refused by PIL's own DecompressionBombError in Image.open (over twice its
    # MAX_IMAGE_PIXELS), which read_image wraps; large.png's 81 megapixels reach read_image's MAX_PIXELS check
    (["--image", "{root}/bomb.png"], "cannot read image '{root}/bomb.png': Image size (10000000000 pixels) exceeds"),
    (["--image", "{root}/large.png"], "'{root}/large.png' is 9000×9000, more than this reads (67 megapixels)"),
    (["--image", "{root}/chunk.png"], "cannot read image '{root}/chunk.png': Decompressed data too large"),
    (["--mask", "{root}/ok.png"], "a mask needs the image it masks: pass the image too"),
    (["--image", "{root}/ok.png", "--strength", "1.5"], "strength must be a finite number from 0 to 1"),
    (["--out", "{root}/folder"], "--out '{root}/folder' is a folder: give a file name inside it"),
    (["--out", "/proc/x.png"], "cannot write --out '/proc/x.png': "),
    (["--out", "{root}/notes.txt/x.png"], "cannot write --out '{root}/notes.txt/x.png': '{root}/notes.txt' is a file"),
    (["--out", ""], "argument --out: is empty: give a path"),
    (["--out", "{root}/x.jpg"], "--out '{root}/x.jpg' would hold a PNG file under another name: give a name ending in "
                               ".png"),
    (["--zoom", "5000"], "--zoom 5000 would save 40000-pixel sides, more than 16384"),
    (["--vae-tile", "0"], "argument --vae-tile: must be positive, got 0"),
    (["--model", "{root}/nowhere"], "no model '{root}/nowhere': give a model folder or a shipped model"),
    (["--model", "{root}/notes.txt"], "'{root}/notes.txt' is a file, not a t2i model folder"),
    (["--model", "{root}/random.ckpt"], "'{root}/random.ckpt' is not a PyTorch checkpoint"),
    (["--model", "{root}/nan"], "model '{root}/nan' has weights that are NaN or infinite (unet)"),
]


@pytest.mark.parametrize("options,match", GENERATE, ids=[" ".join(o)[:40] for o, _ in GENERATE])
def test_generate_refuses_in_one_line(files, tmp_path, capsys, options, match):
    options = [o.format(root=files) for o in options]
    editing = "--strength" in options or "--mask" in options  # an unconditional model takes no prompt
    model = [] if "--model" in options else ["--model", str(files / ("uncond" if editing else "text"))]
    prompt = [] if "--model" in options or editing else ["a red circle"]
    out = [] if "--out" in options else ["--out", str(tmp_path / "x.png")]
    assert_one_line(["generate", *prompt, *model, *out, *options], match.format(root=files), capsys)


@pytest.mark.parametrize("option", [["--sampler", "ddim"], ["--cfg", "5"], ["--strength", "0.5"]])
def test_a_prompt_after_an_option_of_several_values_is_told_to_come_first(files, tmp_path, capsys, option):
    assert_one_line(["generate", "--model", str(files / "text"), "--out", str(tmp_path / "x.png"), *option,
                     "a red circle"], "a prompt after them is read as one: put the prompt first", capsys)


def test_an_unconditional_model_refuses_a_negative_prompt(files, tmp_path, capsys):
    assert_one_line(["generate", "--model", str(files / "uncond"), "--negative", "blurry", "--out",
                     str(tmp_path / "x.png")],
                    f"model '{files / 'uncond'}' is unconditional: it takes no negative prompt", capsys)


OTHERS = [
    (["sample", "--model", "{root}/uncond", "--num", "1000000000"],
     "argument --num: must be positive and at most 4096, got 1000000000"),
    (["sample", "--model", "{root}/uncond", "--out", "{root}/folder"],
     "--out '{root}/folder' is a folder: give a file name inside it"),
    (["noise", "{root}/ok.png", "--size", "100000"], "argument --size: must be positive and at most 4096, got 100000"),
    (["noise", "{root}/ok.png", "--timesteps", "1000000000"],
     "argument --timesteps: must be positive and at most 100000, got 1000000000"),
    # PIL's DecompressionBombError, wrapped by read_image (see the generate row for bomb.png)
    (["noise", "{root}/bomb.png"], "cannot read image '{root}/bomb.png': Image size (10000000000 pixels) exceeds"),
    (["eval", "nll", "--model", "{root}/uncond", "--data", "{root}/broken", "--terms", "1000000000"],
     "the number of terms must be a whole number from 2 to 20"),
    (["eval", "prompts", "--model", "{root}/text", "--json", "/proc/x.json"], "cannot write --json '/proc/x.json': "),
    (["export", "--model", "{root}/uncond", "--out", "{root}/uncond"], "cannot export '{root}/uncond' onto itself"),
    (["convert", "{root}/random.ckpt", "{root}/converted"], "'{root}/random.ckpt' is not a PyTorch checkpoint"),
    (["bench", "--model", "{root}/text", "--threads", "100000", "--device", "cpu"],
     "argument --threads: must be positive and at most 256, got 100000"),
    (["bench", "--model", "{root}/text", "--batch", "1000000000", "--device", "cpu"],
     "argument --batch: must be positive and at most 4096, got 1000000000"),
    (["data", "emoji", "--out", "{root}/emoji", "--test-fraction", "nan"],
     "argument --test-fraction: must be a number from 0 to below 1, got nan"),
    (["data", "emoji", "--out", "{root}/emoji", "--size", "100000"],
     "argument --size: must be positive and at most 1024, got 100000"),
    (["eval", "prompts", "--model", "{root}/text", "--per-prompt", "1000000000"],
     "argument --per-prompt: must be positive and at most 1024, got 1000000000"),
    (["train", "--out", "", *TINY_TRAIN], "argument --out: is empty: give a path"),
    (["train", "--out", "{root}/notes.txt", *TINY_TRAIN], "'{root}/notes.txt' is a file, not a run folder"),
    (["train", "--out", "{root}/r-lr", "--lr", "inf", *TINY_TRAIN], "argument --lr: must be positive, got inf"),
    (["train", "--out", "{root}/r-lr", "--lr", "nan", *TINY_TRAIN], "argument --lr: must be positive, got nan"),
    # --ema-decay, --grad-clip and --min-snr-gamma are plain floats to argparse: the training config's RANGES refuse
    (["train", "--out", "{root}/r-ema", "--ema-decay", "2", *TINY_TRAIN],
     "ema_decay must be a finite number from 0.0 to 1.0, got 2.0"),
    (["train", "--out", "{root}/r-ema", "--ema-decay", "nan", *TINY_TRAIN],
     "ema_decay must be a finite number from 0.0 to 1.0, got nan"),
    (["train", "--out", "{root}/r-clip", "--grad-clip", "nan", *TINY_TRAIN],
     "grad_clip must be a finite number from 0.0 to 1000000.0, got nan"),
    (["train", "--out", "{root}/r-snr", "--min-snr-gamma", "-1", *TINY_TRAIN],
     "min_snr_gamma must be a finite number above 0.0 and at most 1000000.0, got -1.0"),
    # positive() without a maximum lets these through argparse: UNetConfig's and the training config's RANGES refuse
    (["train", "--out", "{root}/r-big", *TINY_TRAIN, "--channels", "1000000000"],
     "model_channels must be a whole number from 1 to 4096, got 1000000000"),
    (["train", "--out", "{root}/r-big", *TINY_TRAIN, "--timesteps", "1000000000"],
     "num_timesteps must be a whole number from 2 to 100000, got 1000000000"),
    (["train", "--out", "{root}/r-big", *TINY_TRAIN, "--image-size", "1048576"],
     "image_size must be a whole number from 1 to 16384, got 1048576"),
    (["train", "--out", "{root}/r-big", *TINY_TRAIN, "--batch-size", "1000000000"],
     "batch_size must be a whole number from 1 to 65536, got 1000000000"),
    (["train", "--out", "{root}/r-mem", *TINY_TRAIN, "--image-size", "2048", "--batch-size", "2048"],
     "U-Net on micro-batches of 2048 at 2048×2048 needs about"),
    (["train-vae", "--out", "{root}/r-vmem", "--image-size", "2048", "--batch-size", "2048", "--device", "cpu"],
     "autoencoder on micro-batches of 2048 at 2048×2048 needs about"),
    (["train", "--out", "{root}/r-dev", *TINY_TRAIN, "--device", "cuda"],
     "there is no device 'cuda' here: choose auto or one of"),
    (["train", "--out", "{root}/r-data", *TINY_TRAIN, "--data", "{root}/data"],
     "'{root}/data/metadata.jsonl' line 1: file_name '../outside.png' must be a path relative to '{root}/data', "
     "inside it"),
    (["train", "--out", "{root}/r-cap", *TINY_TRAIN, "--text", "--data", "{root}/captions"],
     "'{root}/captions/metadata.jsonl' line 1: 'text' must be a caption or a list of captions"),
    (["train", "--out", "{root}/r-none", "--resume"], "run folder '{root}/r-none' does not exist: nothing to resume"),
    (["train", "--out", "{root}/r-nocap", *TINY_TRAIN, "--text", "--data", "{root}/uncaptioned"],
     "has a caption: each row of metadata.jsonl needs a 'text'"),
    (["train", "--out", "{root}/r-notext", *TINY_TRAIN, "--text-width", "64", "--mask-padding"],
     "--text-width, --mask-padding set up the text encoder, which trains only with --text"),
    (["train", "--out", "{root}/r-empty", *TINY_TRAIN, "--data", ""], "argument --data: is empty: give a path"),
    (["train", "--out", "{root}/r-empty", *TINY_TRAIN, "--vae", ""], "argument --vae: is empty: give a path"),
    (["train", "--out", "{root}/text", *TINY_TRAIN], "holds a model (its config.json)"),
    (["convert", "{root}/text", "{root}/model.safetensors"], "names a file, and a t2i model (--to original"),
    (["convert", "{root}/text", "{root}/ok.png", "--to", "diffusers"], "names a file, and a diffusers model"),
    (["export", "--model", "{root}/text", "--out", "{root}/model.safetensors"], "names a file, and an exported"),
    (["export", "--model", "{root}/text", "--out", "{root}/r-export", "--steps", "20000"],
     "the exported model's inference settings: steps must be a whole number from 1 to 10000, got 20000"),
    (["train", "--out", "{root}/r-dvae", *TINY_TRAIN, "--vae", "{root}/diffusers-vae"],
     "is no t2i model's config (it has no format_version)"),
    (["generate", "a red circle", "--model", "{root}/text", "--sampler", "ddim", "euler", "--eta", "0.5", "--out",
      "{root}/never.png"], "sampler 'euler' takes no option eta"),
]


@pytest.mark.parametrize("argv,match", OTHERS, ids=[" ".join(a)[:50] for a, _ in OTHERS])
def test_other_commands_refuse_in_one_line(files, capsys, argv, match):
    assert_one_line([a.format(root=files) for a in argv], match.format(root=files), capsys)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_image_met_while_training_is_one_line(files, tmp_path, capsys, workers):
    # in a data-loader process too, whose error PyTorch re-raises with the process's traceback
    assert_one_line(["train", "--out", str(tmp_path / "run"), *TINY_TRAIN, "--data", str(files / "broken"),
                     "--workers", str(workers)], "cannot read image", capsys)


def test_a_comparison_refuses_a_bad_row_before_the_first_runs(files, tmp_path, monkeypatch):
    from t2i.comparison import compare

    pipe = Pipeline.load(files / "text", "cpu")
    calls = []
    monkeypatch.setattr(Pipeline, "__call__", lambda self, **kwargs: calls.append(kwargs))
    with pytest.raises(UserError, match="sampler 'dpmpp_2m' takes no option eta"):
        compare(pipe, ["a red circle"], ["ddim", "dpmpp_2m"], eta=0.5)
    with pytest.raises(UserError, match=re.escape("the guidance scale (cfg) must be a finite number from 0 to 1000.0, "
                                                  "got -1.0")):
        compare(pipe, ["a red circle"], cfgs=[2.0, -1.0])
    assert calls == []


def test_a_run_keeps_its_data_folder_whole_so_it_resumes_from_anywhere(files, tmp_path, monkeypatch):
    from t2i.training.diffusion import TrainConfig

    monkeypatch.chdir(files)
    assert TrainConfig(data="broken").data == str(files / "broken")
    assert TrainConfig(data="shapes").data == "shapes"  # a data set's name stays one


@pytest.fixture(scope="module")
def pipe(files):
    return Pipeline.load(files / "text", "cpu")


API = [
    ({"prompt": None}, "prompt must be a string or a list of strings"),
    ({"prompt": []}, "prompt is an empty list: give at least one prompt"),
    ({"prompt": ["a", "b"], "negative_prompt": ["x", "y", "z"]}, "3 negative prompts for 2 prompts"),
    ({"negative_prompt": 5}, "negative_prompt must be a string or a list of strings, got int"),
    ({"width": "32"}, "width must be a whole number from 1 to 16384, got '32'"),
    ({"width": 8.5}, "width must be a whole number from 1 to 16384, got 8.5"),
    ({"image": "/nonexistent.png"}, "image '/nonexistent.png' does not exist"),
    ({"image": 5}, "image must be a PIL image or an image file's path"),
    ({"seed": 2**64}, f"seed must be a whole number from 0 to 9223372036854775807, got {2**64}"),
    ({"seed": -5}, "seed must be a whole number from 0 to 9223372036854775807, got -5"),
    ({"seed": "7"}, "seed must be a whole number from 0 to 9223372036854775807, got '7'"),
    ({"seed": [1, 2]}, "got 2 seeds for 1 images"),
    ({"num_images": 0}, "num_images must be a whole number of at least 1, got 0"),
    ({"num_images": True}, "num_images must be a whole number of at least 1, got True"),
    ({"num_images": 10**9}, "generating 1000000000 images of 8×8 needs about"),  # no maximum: the memory bound
    ({"steps": 0}, "steps must be a whole number from 1 to 10000, got 0"),
    ({"steps": 2.5}, "steps must be a whole number from 1 to 10000, got 2.5"),
    ({"cfg": math.nan}, "the guidance scale (cfg) must be a finite number from 0 to 1000.0, got nan"),
    ({"cfg": math.inf}, "the guidance scale (cfg) must be a finite number from 0 to 1000.0, got inf"),
    ({"cfg": -1.0}, "the guidance scale (cfg) must be a finite number from 0 to 1000.0, got -1.0"),
    ({"guidance_rescale": -0.1}, "guidance rescale must be a finite number from 0 to 1, got -0.1"),
    ({"sampler": "ddim", "eta": math.nan}, "eta must be a finite number from 0 to 1000, got nan"),
    ({"sampler": "ddim", "eta": "x"}, "eta must be a finite number from 0 to 1000, got 'x'"),
    ({"sampler": "ddpm", "sampler_options": {"variance": 3}}, "variance must be a name such as 'beta_tilde', got 3"),
    ({"sampler": "lms", "sampler_options": {"order": 2.5}}, "order must be a whole number from 0 to 1000, got 2.5"),
    ({"strength": 0.5}, "strength is how far to noise an image to edit: pass the image too"),
    ({"output_type": "tensor"}, "output_type must be one of 'pil', 'np', 'pt', 'latent', not 'tensor'"),
    ({"latents": torch.zeros(1, 4, 8, 8)}, "latents of shape (1, 4, 8, 8) given where (1, 3, 8, 8) are sampled"),
    ({"sampler": 5}, "unknown sampler 5; choose one of"),
]


@pytest.mark.parametrize("kwargs,match", API, ids=[str(k)[:40] for k, _ in API])
def test_api_misuse_raises_user_error(pipe, kwargs, match):
    kwargs = {"prompt": "a red circle", "progress": False, **kwargs}
    with pytest.raises(UserError, match=re.escape(match)):
        pipe(**kwargs)


def test_api_takes_an_image_path_and_a_dtype_name(pipe, files):
    edited = pipe("a red circle", image=str(files / "ok.png"), strength=0.5, seed=0, progress=False)[0]
    assert edited.size == (8, 8)
    assert Pipeline.load(files / "text", "cpu", dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(UserError, match="unknown precision 'float64': choose one of fp32"):
        Pipeline.load(files / "text", "cpu", dtype="float64")
    with pytest.raises(UserError, match="there is no device 'cuda:3' here"):
        Pipeline.load(files / "text", "cuda:3")


def test_sixteen_bit_greyscale_keeps_its_levels(tmp_path):
    from t2i.images import read_image

    grey = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    grey.save(tmp_path / "grey16.png")
    assert read_image(tmp_path / "grey16.png", "L").getpixel((0, 0)) == 128


def test_a_photo_is_read_the_way_up_its_exif_says(tmp_path):
    from t2i.images import read_image

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to show": a phone held upright
    Image.new("RGB", (4, 2), (200, 20, 20)).save(tmp_path / "photo.jpg", exif=exif)
    assert read_image(tmp_path / "photo.jpg").size == (2, 4)


def test_a_tiled_decoder_leaves_the_u_net_at_latent_size_in_the_memory_bound():
    from t2i.guards import generation_bytes, unet_feature_bytes
    from t2i.models.vae import VAEConfig

    unet, vae = UNetConfig(), VAEConfig(block_channels=(128, 256, 512, 512))  # f = 8, as SD's
    whole = generation_bytes(unet, vae, 1, 1024, 1024, True)
    tiled = generation_bytes(unet, vae, 1, 1024, 1024, True, decoder_tiled=True)
    assert tiled == int(unet_feature_bytes(unet, 2, 128, 128)) and tiled < whole


def test_the_memory_bound_counts_two_bytes_a_value_for_bfloat16_networks(monkeypatch):
    import t2i.memory
    from t2i.guards import check_generation_fits, generation_bytes
    from t2i.models.vae import VAEConfig

    unet, vae = UNetConfig(), VAEConfig(block_channels=(128, 256, 512, 512))
    fp32 = generation_bytes(unet, vae, 1, 2048, 2048, True)
    assert generation_bytes(unet, vae, 1, 2048, 2048, True, value_bytes=2) * 2 == pytest.approx(fp32, abs=2)
    monkeypatch.setattr(t2i.memory, "available_memory", lambda device="cpu", root=None: int(0.75 * fp32))
    check_generation_fits(unet, vae, 1, 2048, 2048, True, torch.device("cpu"), dtype=torch.bfloat16)  # fits
    with pytest.raises(UserError, match="generating 1 image of 2048×2048 needs about"):
        check_generation_fits(unet, vae, 1, 2048, 2048, True, torch.device("cpu"))


def test_a_preview_decodes_the_first_image_alone(pipe):
    shown = []
    pipe("a red circle", num_images=3, steps=2, seed=0, progress=lambda i, n, x0: shown.append(x0()))
    assert shown and all(previews is None or len(previews) == 1 for previews in shown)
    assert any(previews for previews in shown)


def test_transparency_is_read_as_automatic1111_reads_it(tmp_path):
    from t2i.images import read_image

    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # see-through, hiding black
    image.putpixel((1, 1), (200, 20, 20, 255))
    image.save(tmp_path / "sticker.png")
    rgb = read_image(tmp_path / "sticker.png")
    assert rgb.getpixel((0, 0)) == (255, 255, 255) and rgb.getpixel((1, 1)) == (200, 20, 20)  # on white
    mask = read_image(tmp_path / "sticker.png", "L")  # a mask is its alpha: the opaque pixel is redrawn
    assert mask.getpixel((1, 1)) == 255 and mask.getpixel((0, 0)) == 0
    Image.new("RGBA", (4, 4), (30, 30, 30, 255)).save(tmp_path / "opaque.png")
    assert read_image(tmp_path / "opaque.png", "L").getpixel((0, 0)) == 30  # fully opaque: its grey levels


def test_a_new_run_refuses_a_training_folder_of_someone_elses_files(tmp_path, capsys):
    photo = tmp_path / "project" / "training" / "photo.png"  # a project's own training/ folder, not a run's
    photo.parent.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(photo)
    assert_one_line(["train", "--out", str(tmp_path / "project"), *TINY_TRAIN],
                    f"'{photo.parent}' holds files that no run of ours wrote (photo.png), which a new run there "
                    "would remove", capsys)
    assert photo.is_file()
