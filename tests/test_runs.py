"""What training loops share: the batches of each step, drawn uniformly or balanced over a metadata field."""

import csv
import json
import math
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from t2i.data import load_dataset
from t2i.errors import UserError
from t2i.text.clip import TextEncoderConfig
from t2i.models.unet import UNetConfig
from t2i.training.batches import StepBatchSampler, group_weights
from t2i.training.config import RunConfig
from t2i.training.datasets import balance_weights
from t2i.training.diffusion import TrainConfig, train
from t2i.training.optimization import scheduled_lr


def test_group_weights_give_every_label_the_same_total():
    labels = ["a"] * 6 + ["b"] * 3 + ["c"]
    weights = group_weights(labels)
    totals = Counter()
    for label, weight in zip(labels, weights.tolist()):
        totals[label] += weight
    assert all(abs(total - 1) < 1e-12 for total in totals.values())


def test_the_learning_rate_warms_up_holds_and_cools_to_zero_at_the_last_step():
    config = RunConfig(lr=1e-3, warmup_steps=10, max_steps=100, cooldown_steps=20)
    lrs = [scheduled_lr(step, config) for step in range(config.max_steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(lr == pytest.approx(1e-3) for lr in lrs[9:80])
    assert lrs[90] == pytest.approx(0.5e-3) and lrs[99] == pytest.approx(0.05e-3)
    assert all(later < earlier for earlier, later in zip(lrs[80:], lrs[81:]))
    assert scheduled_lr(100, config) == 0.0  # a step past the end does not train
    no_cooldown = RunConfig(lr=1e-3, warmup_steps=10, max_steps=100)
    assert scheduled_lr(99, no_cooldown) == pytest.approx(1e-3)


@pytest.mark.parametrize("balanced", [False, True])
def test_a_step_has_the_same_batch_whatever_step_the_run_resumed_at(balanced):
    weights = group_weights(["a"] * 30 + ["b"] * 10) if balanced else None
    whole = list(StepBatchSampler(40, 8, seed=3, start=0, stop=20, weights=weights))
    resumed = list(StepBatchSampler(40, 8, seed=3, start=7, stop=20, weights=weights))
    assert resumed == whole[7:] and all(len(batch) == 8 for batch in whole)


def test_balanced_batches_draw_a_rare_group_as_often_as_a_common_one():
    labels = ["common"] * 90 + ["rare"] * 10
    batches = StepBatchSampler(100, 10, seed=0, start=0, stop=400, weights=group_weights(labels))
    drawn = Counter(labels[i] for batch in batches for i in batch)
    assert abs(drawn["rare"] / 4000 - 0.5) < 0.03, drawn  # uniform draws would give it 10%
    uniform = StepBatchSampler(100, 10, seed=0, start=0, stop=400)
    assert Counter(labels[i] for batch in uniform for i in batch)["rare"] == 400  # every epoch a permutation


@pytest.fixture(scope="module")
def grouped_folder(tmp_path_factory):
    """A metadata.jsonl folder: group 'red' has 12 images, group 'blue' 4."""
    folder = tmp_path_factory.mktemp("grouped")
    rows = []
    for i, group in enumerate(["red"] * 12 + ["blue"] * 4):
        colour = (220, 30, 30) if group == "red" else (30, 30, 220)
        Image.fromarray(np.full((16, 16, 3), colour, np.uint8)).save(folder / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": f"a {group} square", "group": group})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def test_balance_by_reads_the_field_and_refuses_data_without_it(grouped_folder, colour_folder):
    weights = balance_weights(load_dataset(str(grouped_folder), 16, "all", captioned=True), "group")
    assert sorted(set(weights.tolist())) == [1 / 12, 1 / 4]
    with pytest.raises(UserError, match="must have a 'style' field"):
        balance_weights(load_dataset(str(grouped_folder), 16, "all", captioned=True), "style")
    with pytest.raises(UserError, match="must have a 'group' field"):
        balance_weights(load_dataset(str(colour_folder), 16, "train", captioned=True), "group")


def test_a_run_trains_balanced_and_records_it(grouped_folder, tmp_path):
    unet = UNetConfig(model_channels=8, channel_mult=(1,), num_res_blocks=1, attention_levels=(), head_dim=8)
    config = TrainConfig(data=str(grouped_folder), image_size=16, batch_size=4, max_steps=2, save_every=2,
                         sample_every=100, probe_every=0, num_samples=2, device="cpu", balance_by="group")
    text = TextEncoderConfig(max_length=8, width=16, layers=1, heads=2, intermediate_size=32)
    out = train(unet, config, tmp_path / "run", text_config=text).out
    assert json.loads((out / "config.json").read_text())["train"]["balance_by"] == "group"
    with open(out / "loss.csv") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert losses and all(math.isfinite(loss) for loss in losses)


def test_any_seed_a_run_takes_orders_its_batches():
    from t2i.training.config import RunConfig

    seed = RunConfig.RANGES["seed"][1]  # the largest a run's config takes
    order = StepBatchSampler(10, 2, seed, 0, 5).epoch_order(3)
    assert sorted(order.tolist()) == list(range(10))
