"""VLT data."""
