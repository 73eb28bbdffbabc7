"""VLT modeling/seg."""
