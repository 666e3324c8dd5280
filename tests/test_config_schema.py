"""Every config reads through one typed reader: a wrong type, a value out of range, NaN, an unknown
or a missing key is one `UserError` line naming the key (and the file and section, from a file)."""

import json
import math
import shutil

import pytest

from t2i.checkpoints import build_components, load_components, load_vae, read_config, shipped_models
from t2i.errors import UserError
from t2i.folder_config import (SECTIONS, DiffusionSettings, Distillation, InferenceSettings, LoRABase, ModelFolder,
                               text_encoder_class)
from t2i.models.discriminator import DiscriminatorConfig
from t2i.models.unet import UNetConfig
from t2i.models.vae import VAEConfig
from t2i.pipeline import Pipeline
from t2i.text.clip import TextEncoderConfig
from t2i.text.tokenizers import TokenizerSettings
from t2i.training.autoencoder import VAETrainConfig
from t2i.training.diffusion import TrainConfig

BAD_VALUES = [
    (UNetConfig, {"model_channels": "32"}, "model_channels must be a whole number"),
    (UNetConfig, {"model_channels": 1_000_000_000}, "model_channels must be a whole number from 1 to 4096"),
    (UNetConfig, {"model_channels": 32.5}, "model_channels must be a whole number"),
    (UNetConfig, {"model_channels": None}, "model_channels must be a whole number"),
    (UNetConfig, {"model_channels": True}, "model_channels must be a whole number"),
    (UNetConfig, {"channel_mult": 2}, "channel_mult must be a list"),
    (UNetConfig, {"channel_mult": [1, "2"]}, "channel_mult[1] must be a whole number"),
    (UNetConfig, {"channel_mult": []}, "channel_mult must list 1 to 8 levels"),
    (UNetConfig, {"dropout": math.nan}, "dropout must be a finite number"),
    (UNetConfig, {"dropout": 2.0}, "dropout must be a finite number from 0.0 to 1.0"),
    (UNetConfig, {"dropout": 1.0}, "dropout must be below 1"),
    (DiscriminatorConfig, {"layers": 0}, "layers must be a whole number from 1 to 8"),
    (UNetConfig, {"mid_attention": 1}, "mid_attention must be true or false"),
    (UNetConfig, {"block_type": 5}, "block_type must be a string"),
    (UNetConfig, {"context_dim": [768]}, "context_dim must be a whole number"),
    (VAEConfig, {"scaling_factor": math.inf}, "scaling_factor must be a finite number"),
    (VAEConfig, {"scaling_factor": 0.0}, "scaling_factor must be a finite number above 0.0"),
    (VAEConfig, {"block_channels": [64] * 20}, "block_channels must list 1 to 8 levels"),
    (TextEncoderConfig, {"layers": 10**9}, "layers must be a whole number from 1 to 256"),
    (TextEncoderConfig, {"heads": 3}, "not divisible by its 3 heads"),
    (TrainConfig, {"lr": math.inf}, "lr must be a finite number above 0.0"),
    (TrainConfig, {"lr": math.nan}, "lr must be a finite number"),
    (TrainConfig, {"lr": 0.0}, "lr must be a finite number above 0.0"),
    (TrainConfig, {"ema_decay": 2.0}, "ema_decay must be a finite number from 0.0 to 1.0"),
    (TrainConfig, {"ema_decay": math.nan}, "ema_decay must be a finite number"),
    (TrainConfig, {"ema_decay": 1.0}, "ema_decay must be below 1"),
    (TrainConfig, {"grad_clip": math.nan}, "grad_clip must be a finite number"),
    (TrainConfig, {"min_snr_gamma": -1.0}, "min_snr_gamma must be a finite number above 0.0"),
    (TrainConfig, {"batch_size": 10**9}, "batch_size must be a whole number from 1 to 65536"),
    (TrainConfig, {"num_timesteps": 10**9}, "num_timesteps must be a whole number from 2 to 100000"),
    (TrainConfig, {"seed": -1}, "seed must be a whole number"),
    (TrainConfig, {"p_uncond": 1.0}, "p_uncond is a probability below 1"),
    (VAETrainConfig, {"kl_weight": -1.0}, "kl_weight must be a finite number from 0.0"),
]


@pytest.mark.parametrize("kind,values,match", BAD_VALUES, ids=[f"{k.__name__}-{v}" for k, v, _ in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_the_key(kind, values, match):
    for make in (lambda: kind(**values), lambda: kind.from_dict(values, "'x/config.json', section s")):
        with pytest.raises(UserError, match=match.replace("[", r"\[").replace("]", r"\]")) as error:
            make()
        assert "\n" not in str(error.value)


def test_unknown_and_missing_keys_and_a_list_for_an_object():
    with pytest.raises(UserError, match=r"'f', section unet: unknown UNetConfig keys \['chanels'\]"):
        UNetConfig.from_dict({"chanels": 4}, "'f', section unet")
    with pytest.raises(UserError, match="must be a JSON object of UNetConfig settings, got list"):
        UNetConfig.from_dict([1, 2], "'f', section unet")
    from t2i.folder_config import DiffusionSettings

    with pytest.raises(UserError, match=r"DiffusionSettings keys \['num_timesteps'\] are missing"):
        DiffusionSettings.from_dict({"schedule": "linear"})


def test_lists_from_json_become_the_tuples_annotated():
    config = UNetConfig.from_dict({"channel_mult": [1, 2], "attention_levels": [1]})
    assert config.channel_mult == (1, 2) and config.attention_levels == (1,)


@pytest.fixture
def folder(tmp_path):
    out = tmp_path / "model"
    shutil.copytree(shipped_models()["shapes"], out)
    return out


FILE_EDITS = [
    (lambda c: c["unet"].update(model_channels=10**9), "section unet: model_channels must be a whole number"),
    (lambda c: c.update(unet=[1]), "section unet must be a JSON object"),
    (lambda c: c.pop("image_size"), "image_size is missing"),
    (lambda c: c.update(image_size="64"), "image_size must be a whole number"),
    (lambda c: c["diffusion"].update(num_timesteps=1e400), "section diffusion: num_timesteps must be a whole number"),
    (lambda c: c["diffusion"].update(schedule="quadratic"), "unknown schedule 'quadratic'"),
    (lambda c: c["inference"].update(cfg=None), "section inference: cfg must be a finite number"),
    (lambda c: c["inference"].update(steps=2.5), "section inference: steps must be a whole number"),
    (lambda c: c["tokenizer"].update(type="sentencepiece"), "tokenizer: unknown tokenizer type 'sentencepiece'"),
    (lambda c: c["vae"].update(latent_channels=-4), "section vae: latent_channels must be a whole number"),
    (lambda c: c["text_encoder"].update(width="wide"), "section text_encoder: width must be a whole number"),
    (lambda c: c.update(format_version="2"), "needs a whole-number format_version"),
    (lambda c: c["tokenizer"].update(max_length="abc"), "section tokenizer: max_length must be a whole number"),
    (lambda c: c["tokenizer"].update(vocab=5), "section tokenizer: vocab must be a list"),
    (lambda c: c["tokenizer"].update(vocab_file="../../x.txt"), "section tokenizer: vocab_file must name a file in"),
    (lambda c: c["tokenizer"].pop("type"), r"section tokenizer: TokenizerSettings keys \['type'\] are missing"),
    (lambda c: c.update(colour="red"), r"config.json': unknown ModelFolder keys \['colour'\]"),
    (lambda c: c.update(step="x"), "config.json': step must be a whole number"),
    (lambda c: c.update(train=[1]), "section train must be a JSON object"),
    (lambda c: c["diffusion"].update(steps_offset=1000), "steps_offset 1000 must be below num_timesteps 1000"),
]


@pytest.mark.parametrize("edit,match", FILE_EDITS, ids=[m[:40] for _, m in FILE_EDITS])
def test_a_bad_model_config_file_is_one_line_naming_file_section_and_key(folder, edit, match):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    for load in (read_config, lambda f: Pipeline.load(f, "cpu")):
        with pytest.raises(UserError, match=match) as error:
            load(folder)
        assert "\n" not in str(error.value) and "config.json" in str(error.value)


def test_the_shipped_models_configs_pass_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/emoji here: the run's relative data path stays as written, unresolved
    kinds = {"unet": UNetConfig, "vae": VAEConfig, "diffusion": DiffusionSettings, "inference": InferenceSettings,
             "tokenizer": TokenizerSettings, "lora": LoRABase, "distillation": Distillation,
             "train": TrainConfig}  # the run's settings too, as a resume reads them
    shipped = shipped_models()
    assert {"shapes", "emoji"} <= set(shipped)  # inside the package: the loop is never empty
    for name, folder in shipped.items():
        raw = json.loads((folder / "config.json").read_text())
        assert read_config(folder) == raw, name
        kinds["text_encoder"] = text_encoder_class(raw.get("text_encoder"))
        typed = {section: kinds[section].from_dict(values) for section, values in raw.items() if section in SECTIONS}
        top = {key: value for key, value in raw.items() if key not in SECTIONS}
        for section, config in [*typed.items(), ("top level", ModelFolder.from_dict(top))]:
            read = json.loads(json.dumps(config.to_dict()))  # tuples as JSON's lists
            written = raw.get(section, top)
            assert {key: read[key] for key in written} == written, (name, section)  # every value as written


def test_an_autoencoder_folder_needs_its_image_size_too(folder):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    autoencoder = {key: config[key] for key in ("format_version", "t2i_version", "vae")}
    path.write_text(json.dumps(autoencoder))
    with pytest.raises(UserError, match="config.json': image_size is missing"):
        read_config(folder)
    path.write_text(json.dumps({**autoencoder, "image_size": 32}))
    assert read_config(folder)["image_size"] == 32


def test_load_tokenizer_reads_its_section_through_the_schema():
    from t2i.text.tokenizers import load_tokenizer

    with pytest.raises(UserError, match="section tokenizer: max_length must be a whole number from 2"):
        load_tokenizer({"type": "word", "vocab": ["<pad>", "<bos>", "<eos>", "<unk>"], "max_length": math.inf})
    with pytest.raises(UserError, match="section tokenizer: must be a JSON object"):
        load_tokenizer(["word"])


def test_a_resumed_run_names_the_file_for_its_saved_values_and_the_caller_for_its_changes():
    saved = json.loads((shipped_models()["emoji"] / "config.json").read_text())["train"]
    assert TrainConfig.resumed(saved, {"max_steps": 20_000}).max_steps == 20_000
    with pytest.raises(UserError, match="section train: ema_decay must be a finite number"):
        TrainConfig.resumed({**saved, "ema_decay": math.nan}, {})
    with pytest.raises(UserError, match="section train: must be a JSON object of TrainConfig settings, got list"):
        TrainConfig.resumed([saved], {})
    with pytest.raises(UserError, match="^lr must be a finite number above 0.0"):
        TrainConfig.resumed(saved, {"lr": math.inf})
    with pytest.raises(UserError, match="section train: unknown prediction type 'x0'"):
        TrainConfig.resumed({**saved, "prediction_type": "x0"}, {})


def test_networks_that_cannot_fit_are_refused_from_their_shapes(folder, monkeypatch):
    config = read_config(folder)
    monkeypatch.setattr("t2i.memory.available_memory", lambda device="cpu": 10**5)  # 100 kB free
    for make in (lambda: build_components(config), lambda: load_components(folder), lambda: load_vae(folder),
                 lambda: Pipeline.load(folder, "cpu")):
        with pytest.raises(UserError, match=r"M parameters\) needs about .* and the cpu has 97.7 KiB free"):
            make()


def test_a_huge_model_in_range_is_refused_before_anything_is_allocated(folder):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["vae"].update(block_channels=[4096] * 8, num_res_blocks=64)  # 315 billion parameters
    path.write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"the autoencoder of .* \(315135.9M parameters\) needs about 1.1 TiB"):
        load_vae(folder)


@pytest.mark.parametrize("text", ['{"format_version": ' + "9" * 5000 + "}", "[" * 100_000 + "]" * 100_000])
def test_a_config_json_python_cannot_parse_is_one_line(tmp_path, text):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(UserError, match="is not a config t2i reads"):
        read_config(tmp_path)
