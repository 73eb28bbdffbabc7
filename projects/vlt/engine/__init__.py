"""VLT engine."""
