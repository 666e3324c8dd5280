"""Foreign weights: Stable Diffusion v1 and 2.x checkpoints of other programs read into our networks,
offline, and ours written in their formats (`stable_diffusion`); what a file is (`infer`);
reading weight files one tensor at a time (`tensors`); each network's names in the foreign
formats (`naming` and the `*_names` modules); the one loading path (`build`); the pretrained
text encoders of installed wheels (`pretrained`)."""
