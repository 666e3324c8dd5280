"""Stable Diffusion v1 checkpoints of other programs: reading them into our networks, offline,
and writing ours in their formats (`stable_diffusion`); what a file is (`infer`); reading
weight files one tensor at a time (`tensors`)."""
