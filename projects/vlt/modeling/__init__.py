"""VLT models: open_clip towers as backbones, adapters (Rein, FAMix), heads and meta-architectures."""
from . import backbone  # noqa: F401
from . import adapters  # noqa: F401
from . import seg  # noqa: F401
from . import det  # noqa: F401
from . import meta_arch  # noqa: F401
