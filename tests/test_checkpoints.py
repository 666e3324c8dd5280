import json

import pytest
import torch

from t2i.checkpoints import export_model, load_model, load_optimizer, model_config, save_model, save_optimizer
from t2i.errors import UserError
from t2i.models.unet import UNet, UNetConfig

CONFIG = UNetConfig(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_dim=8)
DIFFUSION = {"schedule": "cosine", "num_timesteps": 100, "prediction_type": "v"}


def saved_model(path):
    torch.manual_seed(0)
    model = UNet(CONFIG)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    save_model(path, {"unet": model}, model_config(CONFIG, DIFFUSION, image_size=16))
    return model


def test_model_folder_round_trip(tmp_path):
    model = saved_model(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "unet.safetensors"]
    loaded, diffusion, config = load_model(tmp_path)
    assert loaded.config == CONFIG and config["image_size"] == 16
    assert diffusion.num_timesteps == 100 and diffusion.prediction_type == "v"
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 50])
    assert torch.equal(loaded(x, t), model.eval()(x, t))


def test_missing_or_broken_pieces_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nothing")
    with pytest.raises(UserError, match="has no config.json"):
        load_model(tmp_path)
    saved_model(tmp_path)
    (tmp_path / "unet.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_model(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["format_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="upgrade t2i"):
        load_model(tmp_path)
    config["format_version"] = 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="rename its model.safetensors to unet.safetensors"):
        load_model(tmp_path)


def test_export_halves_the_weights_and_records_generation_defaults(tmp_path):
    model = saved_model(tmp_path / "run")
    out = export_model(tmp_path / "run", tmp_path / "shipped", inference={"cfg": 4.0})
    assert (out / "unet.safetensors").stat().st_size < 0.6 * (tmp_path / "run" / "unet.safetensors").stat().st_size
    loaded, _, config = load_model(out)
    assert config["inference"] == {"cfg": 4.0}
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 50])
    torch.testing.assert_close(loaded(x, t), model.eval()(x, t), atol=2e-3, rtol=1e-2)


def test_weights_that_do_not_fit_the_config_are_a_user_error(tmp_path):
    saved_model(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["unet"]["model_channels"] = 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="do not fit the model"):
        load_model(tmp_path)


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        model(torch.randn(5, 4)).square().mean().backward()
        optimizer.step()
    save_optimizer(tmp_path / "opt.safetensors", optimizer)
    fresh = torch.optim.AdamW(model.parameters(), lr=5.0)
    load_optimizer(tmp_path / "opt.safetensors", fresh)
    a, b = optimizer.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for index, values in a["state"].items():
        for name, value in values.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][index][name]))
