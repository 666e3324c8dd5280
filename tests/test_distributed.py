"""Training under torchrun (gloo, on this CPU) trains as one process does: the same weights on 1 and 2
processes (and 2 "nodes"), a run saved by 2 processes resumed by 1, micro-batches, a rank killed
under --max-restarts, SIGTERM to the group; a LoRA fine-tune of a tiny SD on 1 and 2 processes."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from t2i.serve.launch import free_port
from t2i.training.run_folder import current_checkpoint, read_state

TEXT_RUN = ["--text", "--text-width", "32", "--text-layers", "1", "--text-heads", "2", "--text-length", "8",
            "--channels", "16", "--channel-mult", "1", "2", "--num-res-blocks", "1", "--image-size", "16",
            "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "2", "--sample-every", "100000",
            "--probe-every", "0", "--device", "cpu"]
VAE_RUN = ["--channels", "16", "32", "--latent-channels", "4", "--num-res-blocks", "1", "--image-size", "16",
           "--batch-size", "8", "--lr", "1e-3", "--sample-every", "100000", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TIMEOUT = 300


def t2i(*args: str, processes: int = 1, torchrun: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`python -m t2i ARGS` in one process, or under torchrun in `processes` on this machine."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                *torchrun] if processes > 1 or torchrun else [sys.executable]
    done = subprocess.run([*launcher, "-m", "t2i", *args], capture_output=True, text=True, env=ENV, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def raw_weights(run) -> dict[str, torch.Tensor]:
    return load_file(str(current_checkpoint(run) / "model.safetensors"))


def assert_same_weights(a: dict, b: dict, relative: float = 1e-5) -> None:
    """The same training up to the order of floating-point sums: all the weights within `relative` of
    their norm. (Single weights whose gradient is only rounding noise, such as attention's key biases,
    which softmax ignores, can move apart by Adam's ±lr per step: measured up to 1.2e-6 after 6 steps.)"""
    assert a.keys() == b.keys()
    flat_a, flat_b = (torch.cat([weights[k].flatten().double() for k in sorted(a)]) for weights in (a, b))
    assert (flat_a - flat_b).norm() / flat_a.norm() < relative


@pytest.fixture(scope="module")
def one_process(colour_folder, tmp_path_factory):
    """The 1-process text run of 6 steps at batch 8, the reference every other run must equal."""
    out = tmp_path_factory.mktemp("one") / "run"
    t2i("train", "--data", str(colour_folder), "--out", str(out), "--max-steps", "6", "--save-every", "3", *TEXT_RUN)
    return out


def test_two_processes_train_the_text_model_one_process_trains(one_process, colour_folder, tmp_path):
    out = tmp_path / "run"
    done = t2i("train", "--data", str(colour_folder), "--out", str(out), "--max-steps", "6", "--save-every", "3",
               *TEXT_RUN, processes=2)
    assert done.stdout.count("trained to step 6") == 1  # rank 0 reports; rank 1 is quiet
    assert_same_weights(raw_weights(one_process), raw_weights(out))
    ours, theirs = ((run / "loss.csv").read_text().splitlines() for run in (one_process, out))
    assert [float(line.split(",")[2]) for line in ours[1:]] == pytest.approx(
        [float(line.split(",")[2]) for line in theirs[1:]], rel=1e-5)  # the logged loss is the whole batch's


def test_a_run_saved_by_two_processes_resumes_in_one(one_process, colour_folder, tmp_path):
    out = tmp_path / "run"
    t2i("train", "--data", str(colour_folder), "--out", str(out), "--max-steps", "3", "--save-every", "3", *TEXT_RUN,
        processes=2)
    t2i("train", "--out", str(out), "--resume", "--max-steps", "6")
    assert read_state(out)["step"] == 6
    assert_same_weights(raw_weights(one_process), raw_weights(out))


def test_probes_are_rank_0_s_and_read_as_in_one_process(colour_folder, tmp_path):
    """The loss probes (training and held-out examples), which rank 0 alone builds and runs, log what one
    process logs."""
    probing = [*TEXT_RUN[:TEXT_RUN.index("--probe-every")], "--probe-every", "3",
               "--device", "cpu"]
    runs = [tmp_path / "one", tmp_path / "two"]
    for out, processes in zip(runs, (1, 2)):
        t2i("train", "--data", str(colour_folder), "--out", str(out), "--max-steps", "6", *probing,
            processes=processes)
    logs = []
    for out in runs:
        with (out / "loss.csv").open() as f:
            logs.append({row["step"]: row for row in csv.DictReader(f)})
    for step in ("3", "6"):
        for probe in ("train_fixed", "held_out_fixed"):
            one, two = (float(log[step][probe]) for log in logs)
            assert abs(one - two) <= 1e-4 * one, (step, probe, one, two)


def test_micro_batches_accumulate_to_the_whole_batch(one_process, colour_folder, tmp_path):
    out = tmp_path / "run"
    t2i("train", "--data", str(colour_folder), "--out", str(out), "--max-steps", "6", "--save-every", "3", *TEXT_RUN,
        "--micro-batch-size", "3", processes=2)  # shares of 4: micro-batches of 3 and 1
    assert_same_weights(raw_weights(one_process), raw_weights(out))


def test_two_processes_train_the_autoencoder_one_process_trains(colour_folder, tmp_path):
    runs = [tmp_path / "one", tmp_path / "two"]
    for out, processes in zip(runs, (1, 2)):
        t2i("train-vae", "--data", str(colour_folder), "--out", str(out), "--max-steps", "5", "--save-every", "5",
            *VAE_RUN, processes=processes)
    assert_same_weights(*(raw_weights(out) for out in runs))


def test_two_nodes_rendezvous_and_train_together(one_process, colour_folder, tmp_path):
    """Two torchrun launches of one process each, as two machines would be, meeting at 127.0.0.1."""
    out = tmp_path / "run"
    endpoint = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "t2i-test", "-m", "t2i", "train",
               "--data", str(colour_folder), "--out", str(out), "--max-steps", "6", "--save-every", "3", *TEXT_RUN]
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for _ in range(2)]
    results = [node.communicate(timeout=TIMEOUT) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(
        f"node {i}:\n{err[-5000:]}" for i, (_, err) in enumerate(results))
    assert_same_weights(raw_weights(one_process), raw_weights(out))


def test_a_rank_killed_under_max_restarts_resumes_from_the_last_checkpoint(colour_folder, tmp_path):
    out = tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--max-restarts", "1",
         "-m", "t2i", "train", "--data", str(colour_folder), "--out", str(out), "--max-steps", "40",
         "--save-every", "5", *TEXT_RUN], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + TIMEOUT
    while (current_checkpoint(out) if out.exists() else None) is None or read_state(out)["step"] < 10:
        assert time.time() < deadline and launcher.poll() is None
        time.sleep(0.05)
    killed_at = read_state(out)["step"]
    workers = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    os.kill(int(workers[-1]), signal.SIGKILL)
    stdout, stderr = launcher.communicate(timeout=TIMEOUT)
    assert launcher.returncode == 0, stderr[-3000:]
    assert read_state(out)["step"] == 40 and killed_at < 40
    assert "trained to step 40" in stdout
    steps = [int(line.split(",")[0]) for line in (out / "loss.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # the restart took up the log where the checkpoint was
    for folder in (out / "training").glob("checkpoint-*"):
        assert (folder / "state.json").is_file()  # every checkpoint folder left is complete


def test_sigterm_to_the_group_saves_once_and_stops_every_process(colour_folder, tmp_path):
    out = tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "t2i", "train",
         "--data", str(colour_folder), "--out", str(out), "--max-steps", "100000", "--save-every", "1000", *TEXT_RUN],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    deadline = time.time() + TIMEOUT
    while not (out / "loss.csv").is_file() or len((out / "loss.csv").read_text().splitlines()) < 3:
        assert time.time() < deadline and launcher.poll() is None
        time.sleep(0.05)
    os.killpg(launcher.pid, signal.SIGTERM)  # as a scheduler stops a job: every process of the group
    stdout, stderr = launcher.communicate(timeout=TIMEOUT)
    step = read_state(out)["step"]
    assert step >= 20 and f"stopped at step {step}" in stdout, stderr[-3000:]
    assert len(list((out / "training").glob("checkpoint-*"))) == 1  # saved once, where it stopped


def test_two_processes_fine_tune_the_lora_one_process_fine_tunes(colour_folder, tmp_path):
    """LoRA adapters on the U-Net and the text encoder of a tiny random SD (tests/tiny_sd.py), their gradients
    averaged by DDP through the frozen networks' wrapper."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from tiny_sd import tiny_sd_folder

    base = tiny_sd_folder(tmp_path)
    runs = [tmp_path / "one", tmp_path / "two"]
    arguments = ["train", "--init", str(base), "--data", str(colour_folder), "--lora-rank", "4", "--lora-text-encoder",
                 "--max-steps", "3", "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "2", "--sample-every",
                 "100000", "--probe-every", "0", "--device", "cpu"]
    t2i(*arguments, "--out", str(runs[0]))  # in a process of its own, as the others: no training in pytest's,
    t2i(*arguments, "--out", str(runs[1]), processes=2)  # which the forked runs of later tests copy
    assert_same_weights(*(raw_weights(out) for out in runs))


RANK_ZERO_FAILS = """
from t2i.training.distributed import join, leaving, main_first
world, _ = join("cpu")
def fail(error):
    raise error
def report(name, error):
    print(f"{name} rank {world.rank}: {type(error).__name__}: {error}", flush=True)
with leaving(world):
    try:
        with main_first(world):
            if world.main:
                fail(OSError("No space left on device"))
    except Exception as error:
        report("cache", error)
    try:
        world.on_main(lambda: fail(ZeroDivisionError("division by zero")))
    except Exception as error:
        report("save", error)
"""


def test_a_failure_of_rank_0_s_own_work_reaches_every_rank(tmp_path):
    """Rank 0 building a cache the others wait for (`main_first`), or saving a checkpoint (`World.on_main`),
    fails: every rank raises at once (the others a one-line UserError) instead of waiting in a collective."""
    script = tmp_path / "fails.py"
    script.write_text(RANK_ZERO_FAILS)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], capture_output=True, text=True, env=ENV, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {line for line in done.stdout.splitlines() if " rank " in line} == {
        "cache rank 0: OSError: No space left on device",
        "cache rank 1: UserError: the main process failed: OSError: No space left on device",
        "save rank 0: ZeroDivisionError: division by zero",
        "save rank 1: UserError: the main process failed: ZeroDivisionError: division by zero"}, done.stdout
