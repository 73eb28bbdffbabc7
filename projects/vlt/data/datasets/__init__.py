"""VLT data/datasets."""
