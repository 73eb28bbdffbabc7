"""VLT modeling/det."""
