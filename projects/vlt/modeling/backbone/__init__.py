"""VLT modeling/backbone."""
