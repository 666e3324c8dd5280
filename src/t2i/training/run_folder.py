"""A run folder, which survives being stopped at any moment, even by SIGKILL or a power cut.

    RUN/
      config.json, <component>.safetensors   the model to use: the current checkpoint's EMA networks (and its
                                             other model files: a fine-tuning's LoRA files, its tokenizer's)
      loss.csv, loss.png, samples/, snapshots/step_NNNNNN/, students/steps-N/ (a distillation's)
      training/
        lock                  held by the process that trains in the folder (its PID inside)
        latest                the name of the current checkpoint
        checkpoint-NNNNNN/    model.safetensors (raw weights), one file per optimizer,
                              <component>.safetensors (EMA weights), config.json, state.json

A save writes a whole new checkpoint folder (state.json last: a folder with one is complete),
makes it current by replacing `latest` in one rename, then links its model files to the top
(config.json last) and removes the previous checkpoint. Wherever a process stops, the previous
or the new checkpoint is current and whole; resuming finds it by itself, removes what the
stopped save left and brings the top up to date (`lock_run` → `settle`), and `restore` reads
it. Without a valid `latest` the newest complete checkpoint is current; run folders of earlier versions
(the state directly in `training/`, the EMA networks only at the top) resume too. A failed
save (a full or read-only disk) leaves the previous checkpoint current and says so in one line.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import torch

from ..checkpoints import (CONFIG_NAME, STUDENTS, load_optimizer, load_state, load_weights, read_config,
                           save_model, save_optimizer, save_weights, weights_path)
from ..errors import UserError
from ..files import (TMP_SUFFIX, atomic_replace, discard, durable_write_bytes, link_or_copy, make_dir, read_json,
                     remove_file, remove_tree, tmp_path, write_json)

TRAINING_DIR = "training"
LOCK = "lock"
POINTER = "latest"
STATE = "state.json"
RAW_WEIGHTS = "model.safetensors"
SNAPSHOTS = "snapshots"
CHECKPOINT = re.compile(r"checkpoint-(\d+)")
OLD_SWAP_DIRS = ("training.old", "training.tmp")  # earlier versions swapped training/ through these
# a model's files besides its networks' weights (a LoRA's, in the layouts people load): written into the
# folder given, their names returned
ModelFiles = Callable[[Path], Iterable[str]]


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:06d}"


def new_state() -> dict:
    """The training state of a run that has not taken a step."""
    return {"step": 0, "seconds": 0.0}


def is_complete(folder: Path) -> bool:
    return (folder / STATE).is_file()


def current_checkpoint(out: Path) -> Path | None:
    """The folder of the run's current checkpoint; None if no save of it completed."""
    training = Path(out) / TRAINING_DIR
    try:
        name = (training / POINTER).read_text().strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if CHECKPOINT.fullmatch(name) and is_complete(training / name):
        return training / name
    # no pointer yet (stopped between the first checkpoint and its pointer), or one made invalid by hand
    complete = [p for p in training.glob("checkpoint-*") if CHECKPOINT.fullmatch(p.name) and is_complete(p)]
    if complete:
        return max(complete, key=lambda p: int(CHECKPOINT.fullmatch(p.name)[1]))
    # earlier versions: training/ itself, or training.old/ when stopped between its two renames
    return next((folder for folder in (training, Path(out) / OLD_SWAP_DIRS[0]) if is_complete(folder)), None)


def is_old_layout(folder: Path) -> bool:
    """A checkpoint of an earlier version, whose EMA networks are only at the run folder's top."""
    return not CHECKPOINT.fullmatch(folder.name)


def require_checkpoint(out: Path) -> Path:
    if not Path(out).is_dir():
        raise UserError(f"run folder {str(out)!r} does not exist: nothing to resume (start a run there instead)")
    folder = current_checkpoint(out)
    if folder is None:
        raise UserError(f"{str(out)!r} holds no checkpoint to resume (a run stopped before its first save has none): "
                        "start the run again")
    return folder


def state_of(folder: Path) -> dict:
    """The saved {"step", "seconds", "loss_window"} of a checkpoint (the window: the losses since loss.csv's last
    row; empty in older checkpoints), and the float16 loss scaler's state if it has one."""
    state = read_json(folder / STATE, "the training state is incomplete")
    scaler = {"grad_scaler": state["grad_scaler"]} if isinstance(state.get("grad_scaler"), dict) else {}
    window = state.get("loss_window")
    window = {str(name): [float(v) for v in values] for name, values in window.items()} \
        if isinstance(window, dict) else {}
    return {"step": int(state["step"]), "seconds": float(state.get("seconds", 0.0)), "loss_window": window, **scaler}


def read_state(out: Path) -> dict:
    """The saved {"step", "seconds"} of the run's current checkpoint."""
    return state_of(require_checkpoint(out))


def read_run_config(out: Path) -> dict:
    """The config.json of the run's current checkpoint (the one at the top may lag it by a save)."""
    folder = require_checkpoint(out)
    return read_config(out if is_old_layout(folder) else folder)


def check_new_run(out: Path) -> None:
    """Refuse a folder that holds a run (one stopped before its first save may start again), a file
    and an empty name (which would train into the current folder)."""
    if not str(out).strip():
        raise UserError("out_dir is empty: name the run folder")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{str(out)!r} is a file, not a run folder: choose another out_dir")
    if current_checkpoint(out) is not None:
        raise UserError(f"{str(out)!r} already holds a training run: resume it, or choose another out_dir")
    if (out / CONFIG_NAME).is_file():  # a run's top config comes with its first save: this is a model
        raise UserError(f"{str(out)!r} holds a model (its {CONFIG_NAME}), which a run there would overwrite: "
                        "choose another out_dir")
    training = out / TRAINING_DIR
    foreign = sorted(entry.name for entry in training.iterdir() if entry.name not in (LOCK, POINTER)
                     and not CHECKPOINT.fullmatch(entry.name) and not entry.name.endswith(TMP_SUFFIX)) \
        if training.is_dir() else []
    if foreign:  # a new run clears what a stopped one left in training/, which must not be someone's files
        raise UserError(f"{str(training)!r} holds files that no run of ours wrote ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}), which a new run there would remove: choose another "
                        "out_dir")


@contextmanager
def lock_run(out: Path, new: bool = False) -> Iterator[None]:
    """Own the run folder while training in it: a second process is refused, naming the first.
    The system releases the lock when the process ends, however it ends. A `new` run is checked
    again under the lock, and what a run stopped before its first save left is removed; a run
    to resume is settled (`settle`)."""
    out = Path(out)
    if not new:
        require_checkpoint(out)  # before anything is written into a folder that may be no run at all
    try:
        (out / TRAINING_DIR).mkdir(parents=True, exist_ok=True)
        fd = os.open(out / TRAINING_DIR / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise UserError(f"cannot write to {str(out)!r}: {error.strerror or error}; train in a folder "
                        "that can be written") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").split("\n")[0].strip() or "unknown"
            raise UserError(f"{str(out)!r} is in use by process {holder}, which trains in it: wait for it to "
                            "end (or stop it), or choose another out_dir") from None
        pid = f"{os.getpid()}\n".encode()
        os.pwrite(fd, pid, 0)  # written over, then cut, so a reader never finds the file empty
        os.ftruncate(fd, len(pid))
        if new:
            check_new_run(out)
            for path in [*leftovers(out, None), out / TRAINING_DIR / POINTER, out / "loss.csv", out / "loss.png"]:
                discard(path)
        else:
            settle(out)
        yield
    finally:
        os.close(fd)


def leftovers(out: Path, current: Path | None) -> list[Path]:
    """What in the run folder is neither the current checkpoint nor the run's other files:
    checkpoints older or newer (a save stopped before it became current), temporaries, and
    earlier versions' leftovers."""
    training = out / TRAINING_DIR
    found = []
    if training.is_dir():
        for entry in training.iterdir():
            if entry.name in (LOCK, POINTER) or (current is not None and entry == current):
                continue
            if current == training and not (CHECKPOINT.fullmatch(entry.name) or entry.name.endswith(TMP_SUFFIX)):
                continue  # the files of an earlier version's checkpoint
            found.append(entry)
    found += [out / name for name in OLD_SWAP_DIRS if (out / name).exists() and out / name != current]
    for folder in (out, out / SNAPSHOTS, out / STUDENTS):
        found += sorted(folder.glob("*" + TMP_SUFFIX)) if folder.is_dir() else []
    return list(dict.fromkeys(found))  # training.tmp is found twice


def tidy(out: Path, current: Path | None) -> None:
    """Remove the leftovers, each checkpoint's state.json first so that a half-removed one never looks complete."""
    for path in sorted(leftovers(out, current), key=lambda p: p.name != STATE):
        if path.is_dir() and not path.is_symlink():
            remove_tree(path, first=STATE)
        else:
            remove_file(path)


def publish(out: Path, folder: Path) -> None:
    """Make the run folder's model (config.json + EMA weights, and the checkpoint's other model files)
    the checkpoint's: hard links (or copies), config.json last so that a folder with a config is complete."""
    state = read_json(folder / STATE, "the checkpoint is incomplete")
    names = [f"{name}.safetensors" for name in state["ema"]] + list(state.get("files", []))
    for name in [*names, CONFIG_NAME]:
        target = out / name
        if not (target.exists() and os.path.samefile(folder / name, target)):
            link_or_copy(folder / name, target)


def save_checkpoint(out: Path, state: dict, model: torch.nn.Module, ema: Mapping[str, torch.nn.Module],
                    optimizers: Mapping[str, torch.optim.Optimizer], config: dict,
                    files: ModelFiles | None = None) -> None:
    """The checkpoint of step state["step"] (`state` holds "step" and "seconds"): raw weights,
    optimizers, EMA networks, the model's other `files` and `config`, made current in one step, then
    the run folder's model."""
    out = Path(out)
    previous = current_checkpoint(out)
    folder = out / TRAINING_DIR / checkpoint_name(state["step"])
    if folder == previous:
        raise ValueError(f"step {state['step']} is saved already")
    try:
        if folder.exists():  # a save of this step that was stopped before it became current
            remove_tree(folder, first=STATE)
        make_dir(folder)
        save_weights(folder / RAW_WEIGHTS, model.state_dict())
        for name, optimizer in optimizers.items():
            save_optimizer(folder / f"{name}.safetensors", optimizer)
        for name, module in ema.items():
            save_weights(weights_path(folder, name), module.state_dict())
        written = {"files": list(files(folder))} if files is not None else {}
        write_json(folder / CONFIG_NAME, {**config, "step": state["step"]})
        write_json(folder / STATE, {**state, "ema": list(ema), **written})
        durable_write_bytes(out / TRAINING_DIR / POINTER, f"{folder.name}\n".encode())
        publish(out, folder)
        tidy(out, folder)
    except OSError as error:
        current = current_checkpoint(out)  # the pointer on disk says whether the new one became current
        for path in leftovers(out, current):
            discard(path)
        raise save_failed(out, state["step"], error, current == folder, current) from None


def save_failed(out: Path, step: int, error: OSError, committed: bool, current: Path | None) -> UserError:
    """One line: what failed, which checkpoint is current, and what to do."""
    reason = error.strerror or str(error)
    fix = {errno.ENOSPC: "free space", errno.EDQUOT: "free space", errno.EROFS: "make it writable",
           errno.EACCES: "make it writable", errno.EPERM: "make it writable"}.get(error.errno, "fix that")
    if committed:
        return UserError(f"saved the checkpoint of step {step} in {str(out)!r} but could not update the model "
                         f"files beside it: {reason}; {fix} and resume, which updates them")
    then = (f"the checkpoint of step {state_of(current)['step']} is intact: {fix} and resume" if current
            else f"no checkpoint was saved yet: {fix} and start again")
    return UserError(f"could not save the checkpoint of step {step} in {str(out)!r}: {reason}; {then}")


def settle(out: Path) -> None:
    """Remove what a stopped save left, and bring the run folder's model up to date with the
    current checkpoint: what a save stopped after its checkpoint became current had yet to do."""
    folder = require_checkpoint(out)
    try:
        tidy(out, folder)
        if not is_old_layout(folder):
            publish(out, folder)
    except OSError as error:
        raise UserError(f"cannot resume in {str(out)!r}: {error.strerror or error}; make it writable") from None


def restore(out: Path, model: torch.nn.Module, ema: Mapping[str, torch.nn.Module],
            optimizers: Mapping[str, torch.optim.Optimizer]) -> dict:
    """Load the raw weights, optimizers and EMA networks of the current checkpoint; returns its state."""
    folder = require_checkpoint(Path(out))
    ema_dir = out if is_old_layout(folder) else folder
    load_state(model, load_weights(folder / RAW_WEIGHTS), folder)
    for name, optimizer in optimizers.items():
        load_optimizer(folder / f"{name}.safetensors", optimizer)
    for name, module in ema.items():
        load_state(module, load_weights(weights_path(ema_dir, name)), ema_dir)
    return state_of(folder)


def save_snapshot(out: Path, step: int, components: Mapping[str, torch.nn.Module], config: dict,
                  files: ModelFiles | None = None) -> None:
    """The model of step `step` (networks, other `files`, config) kept in snapshots/step_NNNNNN."""
    save_model_folder(Path(out) / SNAPSHOTS / f"step_{step:06d}", components, config, files,
                      f"the model of step {step}")


def save_model_folder(final: Path, components: Mapping[str, torch.nn.Module], config: dict,
                      files: ModelFiles | None = None, what: str = "the model") -> None:
    """A model folder (networks, other `files`, config) that a run keeps beside its checkpoints, at `final`:
    written aside and renamed in whole, over the same model kept by a run stopped before its next checkpoint."""
    tmp = tmp_path(final)
    try:
        if tmp.exists():
            remove_tree(tmp)
        if files is not None:
            make_dir(tmp)
            files(tmp)
        save_model(tmp, components, config)
        if final.exists():
            remove_tree(final)
        atomic_replace(tmp, final)
    except OSError as error:
        discard(tmp)
        raise UserError(f"could not keep {what} in {str(final)!r}: {error.strerror or error}; "
                        "make room and resume") from None
