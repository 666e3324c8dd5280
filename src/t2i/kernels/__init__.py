"""Optional fast paths for inference, each beside its pure-PyTorch fallback."""
