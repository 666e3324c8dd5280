"""Networks: the U-Net denoiser and the layers it is built from."""
