"""VLT modeling/adapters."""
from .rein import Rein, ReinQueryLink, build_rein, rein_trainable_report  # noqa: F401
