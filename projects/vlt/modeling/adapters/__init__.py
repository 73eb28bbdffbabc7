"""VLT modeling/adapters."""
