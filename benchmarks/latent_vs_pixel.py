"""Training time to a prompt accuracy: a latent text-to-image model against a pixel one.

Two finished runs are compared: a pixel-space run and a latent run (`t2i train --vae`),
each with the number of steps after which it reached the accuracy being compared (read
off `t2i eval prompts` on its checkpoints). This script measures what one training step
of each costs on this machine, in the same process: both models are rebuilt from their
config.json, fed real batches of their own data (images; cached posterior latents), and
their steps (text encoder, U-Net forward and backward, AdamW) are interleaved, the order
alternating every round. Time to accuracy = steps × median seconds per step, and the
ratio pixel / latent says how many times sooner the latent model gets there. The
autoencoder's own training time (from its loss.csv) is reported beside it: it is paid
once and shared by every latent model trained on its latents.

Run:  python benchmarks/latent_vs_pixel.py --pixel RUN --pixel-steps N --latent RUN --latent-steps M
"""

from __future__ import annotations

import argparse
import csv
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from t2i.checkpoints import build_components, diffusion_from_config, load_vae, read_config
from t2i.data import load_dataset
from t2i.data.latents import sample_latents
from t2i.text.tokenizers import load_tokenizer
from t2i.text.condition import text_condition
from t2i.training.datasets import latent_dataset
from t2i.training.diffusion import TrainConfig
from t2i.training.optimization import gradient_step


class Trainer:
    """One run's networks, optimizer and a fixed real batch, stepped as `t2i train` steps."""

    def __init__(self, run: Path, batch_size: int):
        config = read_config(run)
        self.config = config
        train = TrainConfig.from_dict({**config["train"], "batch_size": batch_size})
        self.diffusion = diffusion_from_config(config)
        torch.manual_seed(0)
        self.model = build_components({k: v for k, v in config.items() if k != "vae"})
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=train.lr)
        self.tokenizer = load_tokenizer(config["tokenizer"], run)
        dataset = load_dataset(train.data, train.image_size, "train", captioned=True)
        self.vae = load_vae(run) if "vae" in config else None
        if self.vae is not None:
            dataset = latent_dataset(dataset, self.vae, run, train, "cpu")
        items = [dataset[i] for i in range(batch_size)]
        x0 = torch.stack([x for x, _ in items])
        generator = torch.Generator().manual_seed(0)
        self.x0 = x0 if self.vae is None else sample_latents(x0, self.vae.config.scaling_factor, generator)
        self.ids = self.tokenizer([c for _, c in items], truncate=True)
        self.train = train

    def step(self) -> float:
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(0)
        cond = text_condition(self.model["text_encoder"], self.ids, self.model["unet"].config)
        loss = self.diffusion.training_loss(self.model["unet"], self.x0, generator=generator, **cond).mean()
        gradient_step(self.optimizer, loss, self.model.parameters(), self.train.lr, self.train.grad_clip)
        return time.perf_counter() - start


def training_seconds(run: Path) -> float | None:
    """The training time a run's loss.csv records at its last row (None if it has none)."""
    path = run / "loss.csv"
    if not path.is_file():
        return None
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("seconds")]
    return float(rows[-1]["seconds"]) if rows else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pixel", type=Path, required=True, help="a pixel-space text-to-image run folder")
    p.add_argument("--pixel-steps", type=int, required=True, help="its steps to the compared accuracy")
    p.add_argument("--latent", type=Path, required=True, help="a latent text-to-image run folder")
    p.add_argument("--latent-steps", type=int, required=True, help="its steps to the compared accuracy")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()

    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    trainers = {"pixel": Trainer(args.pixel, TrainConfig.from_dict(read_config(args.pixel)["train"]).batch_size),
                "latent": Trainer(args.latent, TrainConfig.from_dict(read_config(args.latent)["train"]).batch_size)}
    for trainer in trainers.values():
        trainer.step(), trainer.step()  # warm-up
    times = {name: [] for name in trainers}
    for round_ in range(args.repeats):
        for name in (list(trainers) if round_ % 2 == 0 else list(reversed(trainers))):
            times[name].append(trainers[name].step())
    steps = {"pixel": args.pixel_steps, "latent": args.latent_steps}
    print()
    print("| model | U-Net input | batch | parameters | median s/step | steps to accuracy | time to accuracy |")
    print("|---|---|---:|---:|---:|---:|---:|")
    total = {}
    for name, trainer in trainers.items():
        median = statistics.median(times[name])
        total[name] = median * steps[name]
        shape = "×".join(str(s) for s in trainer.x0.shape[1:])
        params = sum(p.numel() for p in trainer.model.parameters())
        print(f"| {name} | {shape} | {trainer.train.batch_size} | {params:,} | {median:.3f} | {steps[name]} | "
              f"{total[name] / 60:.1f} min |")
    print(f"\npixel / latent time to accuracy: {total['pixel'] / total['latent']:.2f}×")
    vae_folder = Path(trainers["latent"].config["train"]["vae"])
    vae_seconds = training_seconds(vae_folder)
    if vae_seconds is not None:
        print(f"the autoencoder ({vae_folder}) trained for {vae_seconds / 60:.1f} min (its loss.csv); counting it, "
              f"pixel / (autoencoder + latent) = {total['pixel'] / (total['latent'] + vae_seconds):.2f}×")


if __name__ == "__main__":
    main()
