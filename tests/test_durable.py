"""A run folder survives whatever stops its process: SIGKILL after any filesystem operation of a
save or at random moments, a full or read-only disk, a second process, bad input met mid-run.
Each time the run resumes by itself and ends bit-identical to the run nobody stopped.

A killed training runs in a forked child (fork is fast, and the child inherits the imported
torch); `files.after_operation` kills it, or fails the disk, after the n-th operation.
T2I_KILL_TRIALS sets how many random kills the real training takes (default 20).
"""

import copy
import csv
import errno
import itertools
import os
import random
import re
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from t2i import files
from t2i.checkpoints import export_model
from t2i.errors import UserError
from t2i.models.unet import UNetConfig
from t2i.training.config import RunConfig
from t2i.training.diffusion import TrainConfig, resume, train
from t2i.training.loop import Hooks, run_steps
from t2i.training.loss_log import LossLog
from t2i.training.optimization import ema_decay_at, gradient_step, scheduled_lr, update_ema
from t2i.training.run_folder import (current_checkpoint, leftovers, lock_run, new_state, read_state, restore,
                                     save_checkpoint)

KILL_TRIALS = int(os.environ.get("T2I_KILL_TRIALS", "20"))
DATA = torch.linspace(-1, 1, 12)[:, None]  # twelve scalars x; the toy learns y = 3x


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Results bit-identical across processes need the same number of threads in each."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_fsync(monkeypatch):
    """A SIGKILL keeps what the process wrote in the page cache, so fsync only guards against a
    power cut, which no test can make; without it the toy's hundreds of saves take seconds, not
    tens of seconds (the diffusion runs below keep it)."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


class Data(torch.utils.data.Dataset):
    """DATA's items; from the (`bad_after` + 1)-th item read on, an unreadable image."""

    def __init__(self, bad_after: int | None = None):
        self.bad_after, self.read = bad_after, 0

    def __len__(self):
        return len(DATA)

    def __getitem__(self, i):
        self.read += 1
        if self.bad_after is not None and self.read > self.bad_after:
            raise UserError(f"cannot read 'image{i}.png': image file is truncated")
        return DATA[i]


class Toy:
    """A one-weight regression trained by `run_steps` into a locked run folder, which it resumes
    if the folder holds a checkpoint and starts again if not; `kill_at` SIGKILLs it in that step."""

    def __init__(self, out: Path, config: RunConfig, data: Data | None = None, kill_at: int | None = None):
        self.out, self.config, self.data, self.kill_at = out, config, data or Data(), kill_at
        torch.manual_seed(0)
        self.model = torch.nn.ModuleDict({"net": torch.nn.Linear(1, 1)})
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizers = {"optimizer": torch.optim.AdamW(self.model.parameters(), lr=config.lr)}

    def step(self, x: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        if k == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        loss = ((self.model["net"](x) - 3 * x - 0.1 * torch.randn(x.shape)) ** 2).mean()
        gradient_step(self.optimizers["optimizer"], loss, self.model.parameters(), scheduled_lr(k, self.config), 1.0)
        update_ema(self.ema, self.model, ema_decay_at(k, 0.9))
        return {"loss": loss}

    def save(self, state: dict) -> None:
        save_checkpoint(self.out, state, self.model, self.ema, self.optimizers, {"toy": True})

    def train(self):
        resumed = current_checkpoint(self.out) is not None
        with lock_run(self.out, new=not resumed):
            state = restore(self.out, self.model, self.ema, self.optimizers) if resumed else new_state()
            return run_steps(self.step, self.data, self.config, self.out, state, Hooks(self.save, lambda k: None),
                             columns=("loss",), device=torch.device("cpu"))


def toy_config(**changes) -> RunConfig:
    base = dict(batch_size=4, max_steps=8, lr=0.05, warmup_steps=2, save_every=4, sample_every=1000, log_every=2,
                seed=3, device="cpu")
    return RunConfig(**{**base, **changes})


CHILD_LIMIT_S = 120  # a child still running after this is hung: killed, and the test fails


def start_child(work, hook=None) -> int:
    """Run `work` in a forked process, as a training that may be killed; its PID. The child takes a
    lock of its own for tqdm: the parent's thread lock may have been held by another thread (tqdm's
    monitor) at the fork, and a lock copied held is never released; and tqdm's default lock holds a
    semaphore shared with the parent, which a child killed while writing its bar would hold forever."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            tqdm.set_lock(threading.RLock())
            torch.set_num_threads(1)
            files.after_operation = hook
            work()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    return pid


def wait_child(pid: int) -> int:
    """The exit code of a child: 0 when its work was done, 1 on an error, -9 when it was SIGKILLed."""
    deadline = time.monotonic() + CHILD_LIMIT_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"a child process was still running after {CHILD_LIMIT_S} s: hung")


def in_child(work, hook=None) -> int:
    return wait_child(start_child(work, hook))


def kill_after(n: int):
    """A hook that SIGKILLs its process once n filesystem operations are done."""
    count = itertools.count(1)

    def hook(what: str) -> None:
        if next(count) == n:
            os.kill(os.getpid(), signal.SIGKILL)
    return hook


def fail_at(n: int, code: int):
    """A hook whose n-th operation fails with OSError `code` (a full disk, a read-only one)."""
    count = itertools.count(1)

    def hook(what: str) -> None:
        if next(count) == n:
            raise OSError(code, os.strerror(code), what)
    return hook


def listing(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))


def loss_rows(out: Path) -> list[dict]:
    with (out / "loss.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def safetensors_content(path: Path) -> tuple[dict, dict]:
    """The tensors of a file as bytes (bit-identical or not), and its metadata (whose order in the
    file varies from one writing to the next)."""
    with safe_open(str(path), "pt") as f:
        return {k: (f.get_tensor(k).dtype, f.get_tensor(k).numpy().tobytes()) for k in f.keys()}, f.metadata()


def assert_same_run(out: Path, reference: Path) -> None:
    """The same files, none left over; the same bytes in each weights and config file (raw
    weights, optimizer, EMA networks); the same losses logged."""
    assert listing(out) == listing(reference)
    for name in listing(reference):
        if name.endswith(".safetensors"):
            assert safetensors_content(out / name) == safetensors_content(reference / name), name
        elif name.endswith("config.json"):
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert loss_rows(out) == loss_rows(reference)


@pytest.fixture(scope="module")
def toy_reference(tmp_path_factory):
    """The uninterrupted toy run, and the filesystem operations it made."""
    out, ops = tmp_path_factory.mktemp("toy") / "run", []
    files.after_operation = ops.append
    try:
        Toy(out, toy_config()).train()
    finally:
        files.after_operation = None
    return out, [op.replace(f"{out}/", "") for op in ops]


def second_save(ops: list[str]) -> range:
    """The 1-based numbers of the operations of the toy's second save (step 8, with a checkpoint before it)."""
    first = ops.index("mkdir training/checkpoint-000008")
    return range(first + 1, len(ops) + 1)


def test_a_save_makes_its_checkpoint_current_in_one_rename_then_updates_the_model(toy_reference):
    _, ops = toy_reference
    ops = [ops[n - 1] for n in second_save(ops)]
    state = ops.index("rename training/checkpoint-000008/state.json.tmp -> training/checkpoint-000008/state.json")
    pointer = ops.index("rename training/latest.tmp -> training/latest")
    model = [i for i, op in enumerate(ops) if op.startswith("rename") and "/" not in op.split(" -> ")[1]]
    removals = [i for i, op in enumerate(ops) if op.startswith("remove training/checkpoint-000004")]
    assert ops[0] == "mkdir training/checkpoint-000008" and all("checkpoint-000008/" in op for op in ops[1:state])
    assert state == pointer - 2 and pointer < min(model) and max(model) < min(removals)
    assert ops[max(model)] == "rename config.json.tmp -> config.json"
    assert ops[removals[0]] == "remove training/checkpoint-000004/state.json"
    assert ops[-1] == "remove training/checkpoint-000004" and len(ops) == 23


def test_a_kill_after_any_operation_of_a_save_resumes_to_the_uninterrupted_run(tmp_path, toy_reference, no_fsync):
    reference, ops = toy_reference
    first_complete = ops.index("rename training/checkpoint-000004/state.json.tmp -> "
                               "training/checkpoint-000004/state.json")
    for n in range(1, len(ops) + 1):  # both saves: the first (no checkpoint yet) and one after it
        out = tmp_path / f"killed_after_{n}"
        assert in_child(lambda: Toy(out, toy_config()).train(), kill_after(n)) == -signal.SIGKILL, ops[n - 1]
        saved = current_checkpoint(out)
        assert (saved is None) == (n <= first_complete), ops[n - 1]  # then the run starts again
        assert Toy(out, toy_config()).train().step == 8
        assert_same_run(out, reference)
        shutil.rmtree(out)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["no space", "read-only"])
def test_a_failed_save_keeps_the_last_checkpoint_and_says_so_in_one_line(tmp_path, toy_reference, monkeypatch, code,
                                                                         no_fsync):
    reference, ops = toy_reference
    pointer = ops.index("rename training/latest.tmp -> training/latest", ops.index("mkdir training/checkpoint-000008"))
    handler = signal.getsignal(signal.SIGTERM)
    fix = "free space" if code == errno.ENOSPC else "make it writable"
    for n in second_save(ops):
        out = tmp_path / f"failed_at_{n}"
        monkeypatch.setattr(files, "after_operation", fail_at(n, code))
        with pytest.raises(UserError) as raised:
            Toy(out, toy_config()).train()
        monkeypatch.setattr(files, "after_operation", None)
        if n <= pointer:
            assert str(raised.value) == (f"could not save the checkpoint of step 8 in {str(out)!r}: "
                                         f"{os.strerror(code)}; the checkpoint of step 4 is intact: {fix} and resume")
        else:
            assert str(raised.value) == (f"saved the checkpoint of step 8 in {str(out)!r} but could not update the "
                                         f"model files beside it: {os.strerror(code)}; {fix} and resume, which "
                                         "updates them")
        assert read_state(out)["step"] == (4 if n <= pointer else 8)
        assert signal.getsignal(signal.SIGTERM) == handler  # the loop let go of the signals
        assert not [p for p in listing(out) if p.endswith(".tmp")]
        assert {p.name for p in (out / "training").iterdir()} == {"latest", "lock", current_checkpoint(out).name}
        Toy(out, toy_config()).train()
        assert_same_run(out, reference)
        shutil.rmtree(out)


def test_a_filesystem_without_hard_links_gets_copies(tmp_path, toy_reference, monkeypatch):
    reference, _ = toy_reference

    def no_link(src, dst):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_link)
    out = tmp_path / "run"
    Toy(out, toy_config()).train()
    assert_same_run(out, reference)
    assert not os.path.samefile(out / "config.json", current_checkpoint(out) / "config.json")


def test_the_loss_log_is_appended_and_a_resume_drops_the_rows_past_its_step(tmp_path, toy_reference):
    reference, _ = toy_reference
    out = tmp_path / "run"
    assert in_child(lambda: Toy(out, toy_config(log_every=1), kill_at=7).train()) == -signal.SIGKILL
    assert [row["step"] for row in loss_rows(out)] == [str(k) for k in range(1, 8)]  # each written as it came
    with (out / "loss.csv").open("a") as f:
        f.write("8,0.01,0.")  # a row cut short by the kill
    assert read_state(out)["step"] == 4
    LossLog(out, ("loss",), 4)
    assert [row["step"] for row in loss_rows(out)] == ["1", "2", "3", "4"]
    assert (out / "loss.csv").read_text().endswith("\n")
    Toy(out, toy_config(log_every=1)).train()
    assert [row["step"] for row in loss_rows(out)] == [str(k) for k in range(1, 9)]


def test_bad_input_met_mid_run_saves_the_steps_taken_before_stopping(tmp_path, toy_reference):
    reference, _ = toy_reference
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"^cannot read 'image\d+.png': image file is truncated; the checkpoint of "
                                        r"step 6 is saved: resume once that is fixed$"):
        Toy(out, toy_config(), Data(bad_after=6 * 4)).train()  # the batch of step 6 holds the bad image
    assert read_state(out)["step"] == 6
    Toy(out, toy_config()).train()
    assert_same_run(out, reference)


def test_a_full_disk_inside_safetensors_is_a_failed_save_and_leaves_no_partial_file(tmp_path, monkeypatch, no_fsync):
    import safetensors.torch

    from t2i import checkpoints

    real = safetensors.torch.save_file

    def full_disk(tensors, filename, metadata=None):
        if "checkpoint-000008" in filename:
            with open(filename, "wb") as f:  # a part of it written, as a disk filling up leaves it
                f.write(b"\0" * 100)
            raise SafetensorError(f"Error while serializing: I/O error: No space left on device "
                                  f"(os error {errno.ENOSPC})")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoints, "save_file", full_disk)
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"^could not save the checkpoint of step 8 in .*: No space left on device; "
                                        r"the checkpoint of step 4 is intact: free space and resume$"):
        Toy(out, toy_config()).train()
    assert read_state(out)["step"] == 4
    assert not [p for p in listing(out) if p.endswith(".tmp")]


def test_bad_input_whose_save_fails_says_both_in_one_line(tmp_path, toy_reference, monkeypatch, no_fsync):
    def full_disk_at_step_6(what: str) -> None:
        if "checkpoint-000006" in what:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), what)

    out = tmp_path / "run"
    monkeypatch.setattr(files, "after_operation", full_disk_at_step_6)
    with pytest.raises(UserError) as raised:
        Toy(out, toy_config(), Data(bad_after=6 * 4)).train()
    assert re.fullmatch(r"cannot read 'image\d+.png': image file is truncated; could not save the checkpoint of step 6 "
                        rf"in {re.escape(repr(str(out)))}: No space left on device; the checkpoint of step 4 is "
                        r"intact: free space and resume", str(raised.value)), raised.value
    assert read_state(out)["step"] == 4


@pytest.mark.parametrize("old", ["training", "training.old"])
def test_a_run_folder_of_the_earlier_layout_resumes(tmp_path, toy_reference, old):
    """The training state directly in training/ and the EMA networks only at the top, or that
    state in training.old/ after a stop between the two renames of an earlier save."""
    reference, _ = toy_reference
    four, out = tmp_path / "four", tmp_path / "run"
    Toy(four, toy_config(max_steps=4)).train()
    checkpoint = current_checkpoint(four)
    (out / old).mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.safetensors"):
        shutil.copy(checkpoint / name, out / old / name)
    (out / old / "state.json").write_text('{"step": 4, "seconds": 1.0}')
    for name in ("net.safetensors", "config.json", "loss.csv"):
        shutil.copy(four / name, out / name)
    if old == "training.old":
        (out / "training.tmp").mkdir()
    Toy(out, toy_config()).train()
    assert_same_run(out, reference)


@pytest.fixture(scope="module")
def tiny():
    unet = UNetConfig(model_channels=8, channel_mult=(1,), num_res_blocks=1, attention_levels=(), head_dim=8)
    config = TrainConfig(data="shapes", image_size=8, batch_size=4, max_steps=48, save_every=4, sample_every=1000,
                         log_every=1, probe_every=0, num_samples=1, warmup_steps=2, lr=1e-3, device="cpu")
    return unet, config


def train_or_resume(unet: UNetConfig, config: TrainConfig, out: Path) -> None:
    if current_checkpoint(out) is None:
        train(unet, config, out)
    else:
        resume(out)


@pytest.fixture(scope="module")
def diffusion_reference(tmp_path_factory, tiny):
    """The uninterrupted run, trained here: forked children then start warm (a cold one spends ~2 s
    on what a process does once)."""
    out = tmp_path_factory.mktemp("diffusion") / "run"
    train(*tiny, out)
    return out


def logged_steps(out: Path) -> list[int]:
    """The steps of the rows of loss.csv, but a row cut short."""
    text = (out / "loss.csv").read_text() if (out / "loss.csv").is_file() else ""
    return [int(line.split(",")[0]) for line in text[: text.rfind("\n") + 1].splitlines()[1:]]


def unfinished_save(out: Path) -> bool:
    """Whether a kill left a save unfinished: what it wrote is not all current, or the model at
    the top is not yet the current checkpoint's."""
    current = current_checkpoint(out)
    top = out / "config.json"
    return bool(leftovers(out, current)) or (current is not None and not (
        top.exists() and os.path.samefile(current / "config.json", top)))


def test_a_diffusion_run_killed_at_random_moments_ends_as_the_uninterrupted_one(tmp_path, tiny, diffusion_reference):
    """Half the kills at a random time, half after a random filesystem operation (inside a save):
    each time the run resumes by itself and loses at most the steps since its last save."""
    unet, config = tiny
    out, rng = tmp_path / "run", random.Random(0)
    kills = unfinished = 0
    for trial in range(KILL_TRIALS):
        if trial % 2 == 0:
            pid = start_child(lambda: train_or_resume(unet, config, out))
            time.sleep(rng.uniform(0.0, 0.4))
            os.kill(pid, signal.SIGKILL)
            status = wait_child(pid)
        else:
            status = in_child(lambda: train_or_resume(unet, config, out), kill_after(rng.randint(1, 30)))
        assert status in (-signal.SIGKILL, 0)
        kills += status != 0
        unfinished += unfinished_save(out)
        saved = read_state(out)["step"] if current_checkpoint(out) else 0
        assert max(logged_steps(out), default=0) - saved <= config.save_every
        if status == 0:
            break
    assert unfinished >= kills // 4  # many kills stopped a save halfway
    assert in_child(lambda: train_or_resume(unet, config, out)) == 0
    assert_same_run(out, diffusion_reference)


def test_a_second_process_on_a_run_folder_is_refused_and_the_first_finishes_its_own_run(tmp_path, tiny,
                                                                                         diffusion_reference):
    unet, config = tiny
    out, go = tmp_path / "run", tmp_path / "go"

    def wait_at_first_checkpoint(what: str) -> None:  # the first process holds still while the second tries
        if what.endswith(f"-> {out / 'training' / 'latest'}"):
            while not go.exists():
                time.sleep(0.01)

    pid = start_child(lambda: train(unet, config, out), wait_at_first_checkpoint)
    try:
        deadline = time.time() + 60
        while current_checkpoint(out) is None and time.time() < deadline:
            time.sleep(0.01)
        assert read_state(out)["step"] == config.save_every
        in_use = rf"^{str(out)!r} is in use by process {pid}, which trains in it: wait for it to end \(or stop it\), " \
                 r"or choose another out_dir$"
        with pytest.raises(UserError, match=in_use):
            resume(out)
        with pytest.raises(UserError, match=in_use):
            with lock_run(out, new=True):
                pass
        with pytest.raises(UserError, match="already holds a training run: resume it"):
            train(unet, config, out)
    finally:
        go.touch()
    assert wait_child(pid) == 0
    assert_same_run(out, diffusion_reference)


def test_export_refuses_its_own_run_folder_and_leaves_the_run_as_it_was(tmp_path, diffusion_reference):
    run = tmp_path / "run"
    shutil.copytree(diffusion_reference, run)
    with pytest.raises(UserError, match=r"^cannot export .* onto itself: give another out_dir$"):
        export_model(run, run / ".." / "run")
    export_model(run, tmp_path / "shipped")
    assert_same_run(run, diffusion_reference)
    assert sorted(p.name for p in (tmp_path / "shipped").iterdir()) == ["config.json", "unet.safetensors"]
