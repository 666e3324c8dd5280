import json

import pytest
import torch

from t2i.convert.build import build
from t2i.convert.clip_names import transformers_names, transformers_view
from t2i.convert.infer import text_config_from_transformers
from t2i.convert.tensors import StateDictWeights
from t2i.errors import UserError
from t2i.text.clip import CLIPTextTransformer, TextEncoderConfig

TINY = dict(vocab_size=1000, max_length=16, width=64, layers=2, heads=4, intermediate_size=128, eos_token_id=999)


def from_transformers(state_dict, config):
    """Our CLIP text transformer of `config` on a `CLIPTextModel`'s weights, loaded as Stable Diffusion's are."""
    return build("text_encoder", config, transformers_view(StateDictWeights(state_dict)), transformers_names(config),
                 None, "not a CLIP text transformer's weights, or not of this config")


def token_ids(generator, batch=3, length=16, eos=999, high=998):
    """Random ids below `high`; each row ends at a different place in EOS, padded with EOS as SD's tokenizer pads."""
    ids = torch.randint(1, high, (batch, length), generator=generator)
    for row, end in enumerate(torch.randint(1, length, (batch,), generator=generator).tolist()):
        ids[row, end:] = eos
    return ids


@pytest.mark.parametrize("hf_eos, activation", [(999, "quick_gelu"), (2, "gelu")])
def test_matches_transformers_clip_text_model(hf_eos, activation):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.CLIPTextConfig(
        vocab_size=1000, max_position_embeddings=16, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, hidden_act=activation, bos_token_id=998, pad_token_id=1, eos_token_id=hf_eos)
    torch.manual_seed(0)
    hf = transformers.CLIPTextModel(hf_config).eval()
    with torch.no_grad():  # random biases and norms too, so that every converted tensor matters
        for p in hf.parameters():
            p.normal_(std=0.2)
    config = text_config_from_transformers(hf_config.to_dict())
    assert config.eos_token_id == (None if hf_eos == 2 else 999)
    ours = from_transformers(hf.state_dict(), config)

    ids = token_ids(torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(input_ids=ids)
        hidden = ours(ids)
        pooled = ours.pool(hidden, ids)
    assert hidden.shape == (3, 16, 64)
    torch.testing.assert_close(hidden, expected.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, expected.pooler_output, atol=1e-5, rtol=0)


def test_attention_is_causal():
    torch.manual_seed(0)
    model = CLIPTextTransformer(TextEncoderConfig(**TINY)).eval()
    ids = token_ids(torch.Generator().manual_seed(2), batch=2)
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 998
    with torch.no_grad():
        before, after = model(ids), model(changed)
    torch.testing.assert_close(after[:, :5], before[:, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(after[:, 5:], before[:, 5:], atol=1e-3)


def test_shorter_input_reads_the_first_positions_and_longer_input_is_refused():
    torch.manual_seed(0)
    model = CLIPTextTransformer(TextEncoderConfig(**TINY)).eval()
    ids = token_ids(torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(ids[:, :7]), model(ids)[:, :7], atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="at most 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_pool_needs_an_end_of_text_token():
    model = CLIPTextTransformer(TextEncoderConfig(**TINY))
    ids = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(UserError, match="end-of-text"):
        model.pool(torch.zeros(1, 4, 64), ids)


def test_config_round_trips_and_rejects_bad_values():
    for config in (TextEncoderConfig(), TextEncoderConfig.sd_v1(), TextEncoderConfig(**{**TINY, "eos_token_id": None})):
        assert TextEncoderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(UserError, match="unknown TextEncoderConfig keys"):
        TextEncoderConfig.from_dict({**TINY, "dropout": 0.1})
    with pytest.raises(UserError, match="activation"):
        TextEncoderConfig(activation="relu")
    with pytest.raises(UserError, match="divisible"):
        TextEncoderConfig(width=100, heads=3)
    with pytest.raises(UserError, match="unknown pooling 'max'"):
        TextEncoderConfig(pooling="max")


def test_sd_v1_text_encoder_is_clip_vit_l14_size():
    with torch.device("meta"):  # count without allocating
        model = CLIPTextTransformer(TextEncoderConfig.sd_v1())
    assert sum(p.numel() for p in model.parameters()) == 123_060_480
    assert model.position_embedding.shape == (77, 768)
    assert model.token_embedding.weight.shape == (49408, 768)


def test_converter_names_every_parameter_and_refuses_other_weights():
    config = TextEncoderConfig(**TINY)
    ours = CLIPTextTransformer(config).state_dict()
    names = transformers_names(config)
    assert set(names) == set(ours) and len(set(names.values())) == len(names)
    assert names["blocks.1.attention.to_out.weight"] == "text_model.encoder.layers.1.self_attn.out_proj.weight"
    theirs = {names[key]: value for key, value in ours.items()}
    theirs["text_model.embeddings.position_ids"] = torch.arange(16)[None]  # older files carry it
    converted = from_transformers(theirs, config).state_dict()
    assert converted.keys() == ours.keys() and all(torch.equal(converted[k], ours[k]) for k in ours)
    del theirs[names["blocks.0.fc1.bias"]]
    with pytest.raises(UserError, match="missing or misshapen .*layers.0.mlp.fc1.bias"):
        from_transformers(theirs, config)
    with pytest.raises(UserError, match="vision_model"):
        from_transformers({**theirs, "vision_model.encoder.layers.0.fc1.weight": torch.zeros(1)}, config)


def test_padding_mask_covers_each_prompt_through_its_end_token():
    encoder = CLIPTextTransformer(TextEncoderConfig(vocab_size=10, max_length=6, width=8, layers=1, heads=2,
                                                    intermediate_size=16, eos_token_id=2))
    ids = torch.tensor([[1, 5, 2, 0, 0, 0], [1, 5, 6, 7, 2, 0]])
    assert encoder.padding_mask(ids).tolist() == [[True, True, True, False, False, False],
                                                  [True, True, True, True, True, False]]


def test_mean_pooling_averages_each_prompt_through_its_end_token():
    config = TextEncoderConfig(vocab_size=10, max_length=6, width=8, layers=1, heads=2, intermediate_size=16,
                               eos_token_id=2, pooling="mean")
    encoder = CLIPTextTransformer(config)
    ids = torch.tensor([[1, 5, 2, 0, 0, 0], [1, 5, 6, 7, 2, 0]])
    states = torch.randn(2, 6, 8)
    pooled = encoder.pool(states, ids)
    torch.testing.assert_close(pooled[0], states[0, :3].mean(0))
    torch.testing.assert_close(pooled[1], states[1, :5].mean(0))


def test_token_init_std_sets_the_spread_of_the_token_table():
    torch.manual_seed(0)
    for std in (0.02, 1.0):
        table = CLIPTextTransformer(TextEncoderConfig(token_init_std=std)).token_embedding.weight
        assert table.std().item() == pytest.approx(std, rel=0.01)
