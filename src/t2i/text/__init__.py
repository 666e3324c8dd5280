"""Text: tokenizers (CLIP BPE, WordPiece, words), text encoders (CLIP, BERT), where the
pretrained encoders' files are, and the condition the encoders hand the U-Net, cached."""
