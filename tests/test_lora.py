"""LoRA files (Hu et al. 2021) on SD v1 models: read in diffusers' and kohya-ss's layouts, applied on the fly
and fused, equal to diffusers' `load_lora_weights` on the same tiny random pipeline (tests/tiny_sd.py)."""

import json
import re
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from t2i.cli import main
from t2i.convert.lora_names import read_lora, save_lora
from t2i.errors import UserError
from t2i.images import image_parameters
from t2i.pipeline import Pipeline

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("peft")
from tiny_sd import load_reference, tiny_sd_folder  # noqa: E402  (needs diffusers)

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_sd_folder(tmp_path_factory.mktemp("lora_sd"))


@pytest.fixture(scope="module")
def peft_lora(folder, tmp_path_factory):
    """A LoRA made by peft on the reference's networks (rank 4, α 8 on the U-Net and 2 on the text encoder,
    random non-zero B), saved by diffusers with its PEFT configs in the header."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    pipe = load_reference(folder)
    torch.manual_seed(5)
    layers, configs = {}, {}
    for name, targets, alpha in (("unet", UNET_TARGETS, 8), ("text_encoder", TEXT_TARGETS, 2)):
        config = LoraConfig(r=4, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
        layers[name] = get_peft_model_state_dict(inject_adapter_in_model(config, getattr(pipe, name)))
        configs[name] = config.to_dict()
    path = tmp_path_factory.mktemp("peft_lora") / "pytorch_lora_weights.safetensors"
    diffusers.StableDiffusionPipeline.save_lora_weights(
        path.parent, unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers["text_encoder"],
        unet_lora_adapter_metadata=configs["unet"], text_encoder_lora_adapter_metadata=configs["text_encoder"])
    return path


def example_inputs():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49407, (2, 77), generator=generator)
    ids[:, 20:] = 49407
    return (ids, torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([10, 777]),
            torch.randn(2, 77, 64, generator=generator))


@torch.no_grad()
def reference_outputs(pipe):
    ids, x, t, context = example_inputs()
    return SimpleNamespace(text=pipe.text_encoder(ids).last_hidden_state,
                           unet=pipe.unet(x, t, encoder_hidden_states=context).sample)


@torch.no_grad()
def our_outputs(pipe):
    ids, x, t, context = example_inputs()
    return SimpleNamespace(text=pipe.text_encoder(ids).float(),
                           unet=pipe.unet(x.to(pipe.dtype), t, context.to(pipe.dtype)).float())


def assert_outputs_close(ours, theirs, atol=1e-4):
    torch.testing.assert_close(ours.text, theirs.text, rtol=0, atol=atol)
    torch.testing.assert_close(ours.unet, theirs.unet, rtol=0, atol=atol)


def weights(pipe) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value.clone() for name in ("unet", "text_encoder")
            for key, value in getattr(pipe, name).state_dict().items()}


def assert_weights_equal(pipe, expected):
    now = weights(pipe)
    assert now.keys() == expected.keys() and all(torch.equal(now[key], value) for key, value in expected.items())


def test_diffusers_file_equals_diffusers_on_the_fly_and_fused(folder, peft_lora):
    reference = load_reference(folder)
    base = reference_outputs(reference)
    reference.load_lora_weights(str(peft_lora), adapter_name="style")
    ours = Pipeline.load(folder, device="cpu")
    original = weights(ours)
    assert_outputs_close(our_outputs(ours), base)
    name = ours.load_lora(peft_lora, scale=1.0)
    assert name == "pytorch_lora_weights"
    assert len(ours.loras.get(name).updates) == 4 * 2 * 4 + 2 * 4  # 4 blocks' 2 attentions, 2 CLIP layers
    for scale in (0.5, 1.0):
        reference.set_adapters(["style"], adapter_weights=[scale])
        expected = reference_outputs(reference)
        assert (expected.unet - base.unet).abs().max() > 0.05 and (expected.text - base.text).abs().max() > 0.05
        ours.set_lora_scale(name, scale)
        assert_outputs_close(our_outputs(ours), expected)
        assert_weights_equal(ours, original)  # on the fly: the weights are untouched
        ours.fuse_loras()
        assert not ours.loras.hooks
        assert_outputs_close(our_outputs(ours), expected)
        ours.unfuse_loras()
        assert_weights_equal(ours, original)  # bit for bit
        assert_outputs_close(our_outputs(ours), expected)
    ours.fuse_loras()
    ours.unload_lora(name)  # a fused LoRA unloaded: the weights as they were
    assert_weights_equal(ours, original)
    assert not ours.loras.hooks and name not in ours.loras
    # Pipeline.load(loras=...) with the folder diffusers saved, fused
    again = Pipeline.load(folder, device="cpu", loras=[(peft_lora.parent, 0.5)])
    reference.set_adapters(["style"], adapter_weights=[0.5])
    assert_outputs_close(our_outputs(again), reference_outputs(reference))


@pytest.mark.parametrize("unet_format", ["diffusers", "original"])
def test_kohya_files_equal_diffusers(folder, peft_lora, tmp_path, unet_format):
    """The LoRA written by `save_lora` in kohya's layout (α in `.alpha` keys), with the U-Net's layers under
    diffusers' or SD's original names, reads back equal; diffusers reads the files we write (kohya's, and its
    own with one layer's α apart) as we do; without α, and with `lora_te1_`, both read it as α = r."""
    reference = load_reference(folder)
    ours = Pipeline.load(folder, device="cpu")
    kohya = save_lora(read_lora(peft_lora, ours.loras.networks), ours.loras.networks, tmp_path / "style.safetensors",
                      "kohya", unet_format)
    tensors = load_file(str(kohya))
    block = {"diffusers": "down_blocks_0_attentions_0", "original": "input_blocks_1_1"}[unet_format]
    assert f"lora_unet_{block}_transformer_blocks_0_attn1_to_q.lora_down.weight" in tensors
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha" in tensors
    reference.load_lora_weights(str(peft_lora), adapter_name="peft")
    reference.set_adapters(["peft"], adapter_weights=[0.7])
    expected = reference_outputs(reference)
    ours.load_lora(kohya, 0.7)
    assert_outputs_close(our_outputs(ours), expected)
    ours.unload_lora("style")
    if unet_format == "original":
        return  # diffusers reads SD v1 LoRAs in original names only for SDXL's layout
    theirs = load_reference(folder)
    theirs.load_lora_weights(str(kohya), adapter_name="kohya")
    theirs.set_adapters(["kohya"], adapter_weights=[0.7])
    assert_outputs_close(reference_outputs(theirs), expected)

    # one layer's α apart: PEFT's alpha_pattern in the header (diffusers 0.42 drops such a layer's own α from a
    # kohya file, so that layout's per-layer α is checked against the delta set by hand, test_locon_...)
    updates = read_lora(peft_lora, ours.loras.networks)
    layer, update = next(iter(updates["unet"].items()))
    updates["unet"][layer] = type(update)(update.down, update.up, 3 * update.alpha)
    path = save_lora(updates, ours.loras.networks, tmp_path / "uneven.safetensors", "diffusers")
    theirs = load_reference(folder)
    theirs.load_lora_weights(str(path))
    ours.load_lora(path)
    assert_outputs_close(our_outputs(ours), reference_outputs(theirs))
    ours.unload_lora("uneven")

    plain = {key.replace("lora_te_", "lora_te1_"): value for key, value in tensors.items()
             if not key.endswith(".alpha")}
    save_file(plain, str(tmp_path / "plain.safetensors"))
    theirs = load_reference(folder)
    theirs.load_lora_weights(str(tmp_path / "plain.safetensors"), adapter_name="plain")
    ours.load_lora(tmp_path / "plain.safetensors")
    assert_outputs_close(our_outputs(ours), reference_outputs(theirs))


def other_layouts(tensors: dict, folder) -> dict[str, dict]:
    """The peft LoRA's tensors in other layouts people have: α in `.alpha` keys instead of the header,
    diffusers' older attention processors (`…attn1.processor.to_q_lora.down.weight`, `…self_attn.to_q_lora…`),
    and PEFT's own `save_pretrained` (`base_model.model.` keys, α in adapter_config.json; the U-Net alone)."""
    alphas, old, bare = {}, {}, {}
    for key, value in tensors.items():
        network, layer, part = re.fullmatch(r"(unet|text_encoder)\.(.*)\.lora_([AB])\.weight", key).groups()
        alphas[key] = value
        alphas[f"{network}.{layer}.alpha"] = torch.tensor(8.0 if network == "unet" else 2.0)
        block, projection = layer.rsplit(".", 1) if not layer.endswith("to_out.0") else (layer[:-9], "to_out")
        projection = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "out_proj": "to_out"}.get(projection,
                                                                                                     projection)
        processor = ".processor" if network == "unet" else ""
        old[f"{network}.{block}{processor}.{projection}_lora.{'down' if part == 'A' else 'up'}.weight"] = value
        if network == "unet":
            bare[f"base_model.model.{layer}.lora_{part}.weight"] = value
    (folder / "peft").mkdir()
    (folder / "peft" / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "peft_type": "LORA"}))
    save_file(bare, str(folder / "peft" / "adapter_model.safetensors"))
    return {"alpha keys": alphas, "attention processors": old}


def test_other_layouts_read_as_diffusers_reads_them(folder, peft_lora, tmp_path):
    reference = load_reference(folder)
    reference.load_lora_weights(str(peft_lora))
    expected = reference_outputs(reference)
    ours = Pipeline.load(folder, device="cpu")
    for name, tensors in other_layouts(load_file(str(peft_lora)), tmp_path).items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path))
        if name == "attention processors":  # no α, so B·A itself: as diffusers reads it
            theirs = load_reference(folder)
            theirs.load_lora_weights(str(path))
        ours.load_lora(path, name=name)  # diffusers refuses `.alpha` keys: the α of the header, given so
        assert_outputs_close(our_outputs(ours), expected if name == "alpha keys" else reference_outputs(theirs))
        ours.unload_lora(name)
    ours.load_lora(tmp_path / "peft")  # α 8 from adapter_config.json, as the U-Net's in the diffusers file
    torch.testing.assert_close(our_outputs(ours).unet, expected.unet, rtol=0, atol=1e-4)


def test_a_lora_fits_a_linear_map_stored_as_a_1x1_convolution_and_back():
    from torch import nn

    from t2i.models.lora import fitted

    down, up = torch.randn(2, 8, 1, 1), torch.randn(6, 2, 1, 1)
    linear, conv = nn.Linear(8, 6), nn.Conv2d(8, 6, 1)
    assert fitted(down, up, 2.0, linear).down.shape == (2, 8) and fitted(down, up, 2.0, linear).up.shape == (6, 2)
    update = fitted(down.flatten(1), up.flatten(1), 2.0, conv)
    assert update.down.shape == (2, 8, 1, 1) and update.up.shape == (6, 2, 1, 1)
    x = torch.randn(3, 8)
    torch.testing.assert_close(fitted(down, up, 2.0, linear).output(linear, x),
                               update.output(conv, x[:, :, None, None])[:, :, 0, 0])
    assert fitted(down.flatten(1), up, 1.0, nn.Conv2d(8, 6, 3)) is None  # a 3×3 kernel needs a 3×3 A
    assert fitted(down, up, 1.0, nn.Linear(9, 6)) is None and fitted(down, up, 1.0, nn.LayerNorm(8)) is None


def test_sd2_linear_projections_take_loras_of_either_shape(tmp_path):
    """SD 2.x's proj_in/proj_out are Linear layers: a LoRA on them from diffusers, and the same stored as 1×1
    convolutions (as SD v1's are), give diffusers' outputs."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    folder = tiny_sd_folder(tmp_path, sd2=True)
    pipe = load_reference(folder)
    torch.manual_seed(6)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["to_q", "proj_in", "proj_out"], init_lora_weights=False)
    layers = get_peft_model_state_dict(inject_adapter_in_model(config, pipe.unet))
    diffusers.StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=layers,
                                                        unet_lora_adapter_metadata=config.to_dict())
    reference = load_reference(folder)
    reference.load_lora_weights(str(tmp_path / "pytorch_lora_weights.safetensors"))
    expected = reference_outputs(reference).unet
    ours = Pipeline.load(folder, device="cpu")
    assert isinstance(ours.unet.get_submodule("down.0.1.proj_in"), torch.nn.Linear)
    assert (our_outputs(ours).unet - expected).abs().max() > 0.05
    ours.load_lora(tmp_path / "pytorch_lora_weights.safetensors", name="linear")
    torch.testing.assert_close(our_outputs(ours).unet, expected, rtol=0, atol=1e-4)
    kohya = load_file(str(save_lora(read_lora(tmp_path, ours.loras.networks), ours.loras.networks,
                                    tmp_path / "kohya.safetensors")))
    save_file({key: value[..., None, None] if "proj_" in key and value.ndim == 2 else value
               for key, value in kohya.items()}, str(tmp_path / "as_conv.safetensors"))
    ours.unload_lora("linear")
    ours.load_lora(tmp_path / "as_conv.safetensors")
    torch.testing.assert_close(our_outputs(ours).unet, expected, rtol=0, atol=1e-4)


def test_several_loras_scales_and_exact_unfusing(folder, peft_lora, tmp_path):
    ours = Pipeline.load(folder, device="cpu")
    updates = read_lora(peft_lora, ours.loras.networks)
    doubled = {network: {layer: type(u)(u.down, u.up, 2 * u.alpha) for layer, u in layers.items()}
               for network, layers in updates.items()}
    save_lora(doubled, ours.loras.networks, tmp_path / "double.safetensors", "diffusers")
    first, second = ours.load_lora(peft_lora, 0.5), ours.load_lora(tmp_path / "double.safetensors", 0.25)
    both = our_outputs(ours)
    ours.set_lora_scale(second, 0.0)
    ours.set_lora_scale(first, 1.0)  # 0.5·ΔW + 0.25·2ΔW = 1·ΔW
    assert_outputs_close(our_outputs(ours), both)
    ours.set_lora_scale(second, 0.25)
    ours.set_lora_scale(first, 0.5)
    ours.fuse_loras([first])  # one fused, one on the fly
    assert_outputs_close(our_outputs(ours), both)
    ours.set_lora_scale(first, 0.0)  # fused: W is made again from the kept original
    ours.set_lora_scale(second, 0.5)
    assert_outputs_close(our_outputs(ours), both)
    with pytest.raises(UserError, match="already loaded"):
        ours.load_lora(peft_lora, name=first)
    with pytest.raises(UserError, match="no LoRA named 'x' is loaded"):
        ours.set_lora_scale("x", 1)
    with pytest.raises(UserError, match="scale must be a finite number"):
        ours.load_lora(peft_lora, float("nan"))

    half = Pipeline.load(folder, device="cpu", dtype=torch.bfloat16)  # rounding would show in bfloat16
    original = weights(half)
    half.load_additions([peft_lora, (tmp_path / "double.safetensors", -0.3)])
    half.fuse_loras()
    assert not torch.equal(half.unet.get_submodule("down.0.1.transformer_blocks.0.attn1.to_q").weight,
                           original["unet.down.0.1.transformer_blocks.0.attn1.to_q.weight"])
    half.unfuse_loras(["double"])
    half.set_lora_scale("pytorch_lora_weights", 0.7)
    half.unfuse_loras()
    assert_weights_equal(half, original)
    half.fuse_loras()
    half.unload_lora("double")
    half.unload_lora("pytorch_lora_weights")
    assert_weights_equal(half, original)
    assert not half.loras.hooks and not half.loras.originals and not half.loras.on_the_fly


# kohya's layer, the network, the layer in diffusers' (transformers') names, rank, α (None: absent)
LOCON_LAYERS = [("lora_unet_down_blocks_0_resnets_0_conv1", "unet", "down_blocks.0.resnets.0.conv1", 2, 1.0),
                ("lora_unet_down_blocks_0_downsamplers_0_conv", "unet", "down_blocks.0.downsamplers.0.conv", 3, 6.0),
                ("lora_unet_down_blocks_0_attentions_0_proj_in", "unet", "down_blocks.0.attentions.0.proj_in", 2, None),
                ("lora_unet_down_blocks_1_resnets_0_conv2", "unet", "down_blocks.1.resnets.0.conv2", 4, 2.0),
                ("lora_unet_middle_block_0_in_layers_2", "unet", "mid_block.resnets.0.conv1", 2, 1.0),  # SD's names
                ("lora_unet_time_embedding_linear_1", "unet", "time_embedding.linear_1", 2, 1.0),
                ("lora_te_text_model_encoder_layers_1_mlp_fc1", "text_encoder", "encoder.layers.1.mlp.fc1", 2, 1.0)]


def test_locon_convolutions_add_the_delta_computed_by_hand(folder, tmp_path):
    """ΔW[o, i] = Σ_j B[o, j] A[j, i] over the kernel, with the layer's stride and padding, set by hand into
    diffusers' networks, against our networks with the file applied on the fly, fused, and under Winograd."""
    generator = torch.Generator().manual_seed(3)
    reference, tensors, scale = load_reference(folder), {}, 0.8
    for key, network, name, rank, alpha in LOCON_LAYERS:
        module = getattr(reference, network)
        if network == "text_encoder" and hasattr(module, "text_model"):  # transformers 4
            name = f"text_model.{name}"
        layer = module.get_submodule(name)
        weight = layer.weight
        down = torch.randn(rank, weight.shape[1], *weight.shape[2:], generator=generator) * 0.3
        up = torch.randn(weight.shape[0], rank, *([1, 1] if weight.ndim == 4 else []), generator=generator) * 0.3
        tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up})
        if alpha is not None:
            tensors[f"{key}.alpha"] = torch.tensor(alpha)
        delta = torch.einsum("or,ri...->oi...", up.flatten(1).double(), down.double()) * (alpha or rank) / rank
        with torch.no_grad():
            weight += (scale * delta).float()
    save_file(tensors, str(tmp_path / "locon.safetensors"))
    expected = reference_outputs(reference)
    ours = Pipeline.load(folder, device="cpu")
    assert (our_outputs(ours).unet - expected.unet).abs().max() > 0.05
    ours.load_lora(tmp_path / "locon.safetensors", scale)
    assert_outputs_close(our_outputs(ours), expected)
    ours.fuse_loras()
    assert_outputs_close(our_outputs(ours), expected)
    ours.unfuse_loras()
    ours.optimize(winograd=True)  # replaces down_blocks.1.resnets.0.conv2: its hook moves to the new layer
    assert type(ours.unet.get_submodule("down.2.0.conv2")).__name__ == "WinogradConv2d"
    assert_outputs_close(our_outputs(ours), expected)


def write(path, tensors):
    save_file({key: torch.zeros(shape) for key, shape in tensors.items()}, str(path))
    return path


TO_Q = "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


@pytest.mark.parametrize("tensors, message", [
    ({"lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight": (2, 32, 1, 1),
      "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight": (32, 2, 1, 1)},
     "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight matches no layer of this model's unet"),
    ({f"unet.{TO_Q.replace('_', '.')}.lora_A.weight": (2, 32)}, "matches no layer"),
    ({f"lora_unet_{TO_Q}.lora_down.weight": (2, 33), f"lora_unet_{TO_Q}.lora_up.weight": (32, 2)},
     "do not fit this model's unet layer"),
    ({f"lora_unet_{TO_Q}.lora_down.weight": (2, 32), f"lora_unet_{TO_Q}.lora_up.weight": (32, 3)}, "do not fit"),
    ({f"lora_unet_{TO_Q}.lora_down.weight": (2, 32)}, "has no up weight beside it"),
    ({f"lora_unet_{TO_Q}.alpha": ()}, "has no down weight beside it"),
    ({f"lora_unet_{TO_Q}.lora_down.weight": (2, 32), f"lora_unet_{TO_Q}.lora_up.weight": (32, 2),
      f"lora_unet_{TO_Q}.alpha": (2,)}, "not one number"),
    ({f"lora_unet_{TO_Q}.hada_w1_a": (2, 32)}, "LoHa, which is not supported"),
    ({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (2, 64)}, "an SDXL LoRA"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (32, 4, 3, 3)}, "is not a LoRA weight"),
    ({}, "holds no weights"),
])
def test_bad_lora_files_are_refused_in_one_line(folder, tmp_path, tensors, message):
    ours = Pipeline.load(folder, device="cpu")
    with pytest.raises(UserError, match=message) as error:
        ours.load_lora(write(tmp_path / "bad.safetensors", tensors))
    assert "\n" not in str(error.value) and not len(ours.loras) and not ours.loras.hooks


def test_damaged_and_missing_lora_files_are_refused(folder, tmp_path):
    ours = Pipeline.load(folder, device="cpu")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x07" * 100)
    (tmp_path / "garbage.pt").write_bytes(b"not a pickle at all")
    for path, message in ((tmp_path / "garbage.safetensors", "not a readable safetensors file"),
                          (tmp_path / "garbage.pt", "not a PyTorch checkpoint"),
                          (tmp_path / "missing.safetensors", "does not exist"),
                          (tmp_path, "is a folder without a LoRA file")):
        with pytest.raises(UserError, match=message) as error:
            ours.load_lora(path)
        assert "\n" not in str(error.value)


def test_generate_with_a_lora_and_an_embedding(folder, peft_lora, tmp_path, capsys):
    save_file({"<tok>": torch.randn(2, 64)}, str(tmp_path / "learned_embeds.safetensors"))
    common = ["generate", "a <tok> cat", "--model", str(folder), "--steps", "2", "--seed", "0",
              "--embedding", str(tmp_path / "learned_embeds.safetensors")]
    assert main([*common, "--lora", f"{peft_lora}:0.7", "--out", str(tmp_path / "lora.png")]) == 0
    assert main([*common, "--out", str(tmp_path / "plain.png")]) == 0
    with Image.open(tmp_path / "lora.png") as lora, Image.open(tmp_path / "plain.png") as plain:
        assert lora.size == (16, 16) and lora.tobytes() != plain.tobytes()
        assert image_parameters(lora)["loras"] == {peft_lora.stem: 0.7} and "loras" not in image_parameters(plain)
        assert lora.info["parameters"].startswith(f"a <tok> cat <lora:{peft_lora.stem}:0.7>\n")
    capsys.readouterr()
    for option, value, message in (("--lora", f"{peft_lora}:strong", "is not a number"),
                                   ("--lora", f"{peft_lora}:inf", "must be a finite number"),
                                   ("--lora", str(tmp_path / "missing.safetensors"), "does not exist"),
                                   ("--embedding", str(tmp_path / "missing.pt:tok"), "does not exist")):
        with pytest.raises(SystemExit) as exit:  # argparse's error, before the model is loaded
            main([*common, option, value, "--out", str(tmp_path / "x.png")])
        err = capsys.readouterr().err.strip()
        assert exit.value.code == 2 and "\n" not in err and err.startswith("t2i generate: error:") and message in err
