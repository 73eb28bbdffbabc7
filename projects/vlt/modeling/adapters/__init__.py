"""VLT modeling/adapters."""
from .famix import PatchStyleMixer, TokenStyleMixerHook, build_famix_mixer  # noqa: F401,E402
from .rein import Rein, ReinQueryLink, build_rein, rein_trainable_report  # noqa: F401
