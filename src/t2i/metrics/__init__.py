"""Sample-quality metrics: Inception features, FID, KID, and text alignment by nearest neighbour."""
