"""t2i: text-to-image diffusion, written from the DDPM maths up."""

__version__ = "0.2.0"
