"""Text: tokenizers, text encoders, and the condition they hand the U-Net."""
