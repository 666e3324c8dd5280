"""The training loop skeleton with a toy step: the cadence of its hooks, a stop request, a
loss that is not finite, and a resumed run that ends where the uninterrupted one does."""

import copy
import csv
import json
import signal

import pytest
import torch

from t2i.errors import UserError
from t2i.training.config import RunConfig
from t2i.training.loop import Hooks, run_steps
from t2i.training.optimization import ema_decay_at, gradient_step, scheduled_lr, update_ema
from t2i.training.run_folder import new_state, read_state, restore, save_checkpoint

DATA = torch.linspace(-1, 1, 12)[:, None]  # twelve scalars x; the toy learns y = 3x


class Toy:
    """A one-weight regression the loop trains, noting the steps at which each hook ran.
    `nan_at` makes the loss of that step NaN; `stop_after` sends SIGTERM during that step."""

    def __init__(self, out, config: RunConfig, nan_at: int | None = None, stop_after: int | None = None):
        self.out, self.config, self.nan_at, self.stop_after = out, config, nan_at, stop_after
        torch.manual_seed(0)
        self.model = torch.nn.ModuleDict({"net": torch.nn.Linear(1, 1)})
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizers = {"optimizer": torch.optim.AdamW(self.model.parameters(), lr=config.lr)}
        self.calls = {"step": [], "save": [], "sample": [], "probe": [], "keep": []}

    def step(self, x: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        self.calls["step"].append(k)
        noise = 0.1 * torch.randn(x.shape)  # the global generator, which the loop seeds from (seed, k)
        loss = ((self.model["net"](x) - 3 * x - noise) ** 2).mean()
        if k == self.nan_at:
            loss = loss * float("nan")
        gradient_step(self.optimizers["optimizer"], loss, self.model.parameters(), scheduled_lr(k, self.config), 1.0)
        update_ema(self.ema, self.model, ema_decay_at(k, 0.9))
        if k + 1 == self.stop_after:
            signal.raise_signal(signal.SIGTERM)
        return {"loss": loss}

    def hooks(self) -> Hooks:
        def save(state):
            self.calls["save"].append(state["step"])
            save_checkpoint(self.out, state, self.model, self.ema, self.optimizers, {"toy": True})

        def probe(k):
            self.calls["probe"].append(k)
            with torch.no_grad():
                return {"probe": ((self.model["net"](DATA) - 3 * DATA) ** 2).mean().item()}

        return Hooks(save, lambda k: self.calls["sample"].append(k), probe=probe, probe_every=3,
                     keep=lambda k, seconds: self.calls["keep"].append(k), keep_every=6)

    def train(self, resumed: bool = False):
        state = restore(self.out, self.model, self.ema, self.optimizers) if resumed else new_state()
        return run_steps(self.step, DATA, self.config, self.out, state, self.hooks(), columns=("loss", "probe"),
                         device=torch.device("cpu"))


def toy_config(**changes) -> RunConfig:
    base = dict(batch_size=4, max_steps=10, lr=0.05, warmup_steps=2, save_every=4, sample_every=5, log_every=2,
                seed=3, device="cpu")
    return RunConfig(**{**base, **changes})


def rows(out) -> list[dict]:
    with (out / "loss.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_the_hooks_run_at_their_cadence_and_the_log_holds_every_loss(tmp_path):
    toy = Toy(tmp_path, toy_config())
    result = toy.train()
    assert toy.calls == {"step": list(range(10)), "save": [4, 8, 10], "sample": [5, 10], "probe": [3, 6, 9],
                         "keep": [6]}
    assert (result.start, result.step, result.max_steps, result.stopped) == (0, 10, 10, False)
    assert not result.already_done and "model saved in" in str(result)
    logged = rows(tmp_path)
    assert [int(row["step"]) for row in logged] == [2, 3, 4, 6, 8, 9, 10]
    assert [int(row["step"]) for row in logged if row["probe"]] == [3, 6, 9]
    assert float(logged[-1]["loss"]) < float(logged[0]["loss"])  # it learns
    assert read_state(tmp_path)["step"] == 10 and json.loads((tmp_path / "config.json").read_text())["step"] == 10

    again = Toy(tmp_path, toy_config())
    done = again.train(resumed=True)
    assert done.already_done and again.calls["step"] == [] and "already at step 10 of 10" in str(done)


def test_a_stop_request_saves_and_a_resumed_run_ends_where_the_uninterrupted_one_does(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    whole = Toy(straight, toy_config())
    whole.train()
    handler = signal.getsignal(signal.SIGTERM)
    stopped = Toy(split, toy_config(), stop_after=7)
    result = stopped.train()
    assert result.stopped and result.step == 7 and stopped.calls["save"] == [4, 7]
    assert str(result).startswith(f"stopped at step 7: checkpoint saved in {split}")
    assert read_state(split)["step"] == 7
    assert signal.getsignal(signal.SIGTERM) == handler  # the loop's own handler is gone

    resumed = Toy(split, toy_config())
    result = resumed.train(resumed=True)
    assert (result.start, result.step, result.stopped) == (7, 10, False)
    assert resumed.calls["step"] == list(range(7, 10))
    for a, b in ((whole.model, resumed.model), (whole.ema, resumed.ema)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # the same rows: step 8's averages steps 7 and 8 in both, step 7's loss saved with the checkpoint
    assert rows(split) == rows(straight)

    # a run that ends off the logging period (step 5 of period 2) and is then taken further logs a row at
    # its end; the rows after it are the straight run's (step 6's averages steps 5 and 6 there too)
    shorter = tmp_path / "shorter"
    Toy(shorter, toy_config(max_steps=5)).train()
    Toy(shorter, toy_config()).train(resumed=True)
    assert [row for row in rows(shorter) if row["step"] != "5"] == rows(straight)


def test_a_loss_that_is_not_finite_stops_before_saving_and_keeps_the_last_checkpoint(tmp_path):
    reference = Toy(tmp_path / "reference", toy_config(max_steps=8))
    reference.train()
    out = tmp_path / "run"
    toy = Toy(out, toy_config(), nan_at=9)
    with pytest.raises(UserError, match=r"the loss became nan at step 9; the last checkpoint \(step 8\) is intact: "
                                        r"resume from it with a lower lr \(now 0.05\)"):
        toy.train()
    assert toy.calls["save"] == [4, 8] and read_state(out)["step"] == 8
    saved = Toy(out, toy_config())
    restore(out, saved.model, saved.ema, saved.optimizers)
    assert all(torch.equal(x, y) for x, y in zip(reference.model.state_dict().values(),
                                                 saved.model.state_dict().values()))

    with pytest.raises(UserError, match="no checkpoint was saved yet: start again with a lower lr"):
        Toy(tmp_path / "early", toy_config(), nan_at=1).train()
