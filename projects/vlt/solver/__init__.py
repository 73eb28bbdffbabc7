"""VLT solver."""
