"""Training: one loop skeleton (`loop`) to which the diffusion training (`diffusion`) and the
autoencoder training (`autoencoder`) each give their step; fine-tuning Stable Diffusion (`finetune`,
the whole U-Net or LoRA adapters) takes the diffusion training's, and progressive distillation of one of
our models into few-step students (`distill`) a step of its own on the same examples.

The pieces the loop is made of: `batches` (the batches of each step), `run_folder`
(checkpoints that survive any stop, resume, and the lock of a run folder), `optimization`
(learning-rate schedule, gradient step, EMA), `loss_log`, and `config` (what every run is
configured by, and what resuming may change).
"""
