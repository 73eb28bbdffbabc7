"""VLT evaluation."""
