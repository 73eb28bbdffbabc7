"""VLT modeling/meta_arch."""
