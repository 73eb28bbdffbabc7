"""Loading VLT configs: D2's config with every VLT key, a YAML (``_BASE_`` chain) and command-line overrides."""
import os
from typing import Sequence

import yaml
from detectron2.config import CfgNode, get_cfg

from ..config import add_vlt_config
from .errors import ConfigKeyError, InputError, MissingFileError


def load_config(config_file: str, opts: Sequence[str] = (), freeze: bool = True) -> CfgNode:
    """A frozen config from ``config_file`` and ``KEY VALUE`` overrides; unknown keys fail, naming the file. The
    datasets of the files in DATASETS.CUSTOM are registered here."""
    if not os.path.isfile(config_file):
        raise MissingFileError(f"Config file '{config_file}' does not exist")
    cfg = get_cfg()
    add_vlt_config(cfg)
    try:
        cfg.merge_from_file(config_file)
    except KeyError as e:
        raise ConfigKeyError(f"{config_file}: {e.args[0] if e.args else e} (not a Detectron2 or VLT config key)") from e
    except (ValueError, AssertionError, yaml.YAMLError) as e:  # a value of the wrong type, a YAML syntax error
        raise InputError(f"{config_file}: {e}") from e
    opts = list(opts)
    if len(opts) % 2:
        raise InputError(f"command-line overrides must be KEY VALUE pairs, got {len(opts)} items: {opts}")
    for key, value in zip(opts[0::2], opts[1::2]):  # one pair at a time, so an error names its own pair
        try:
            cfg.merge_from_list([key, value])
        except (KeyError, ValueError, AssertionError) as e:
            message = f"command-line override {key} {value!r}: {e}"
            if "Non-existent key" in str(e) or isinstance(e, KeyError):
                raise ConfigKeyError(f"{message} (not a Detectron2 or VLT config key)") from e
            raise InputError(message) from e
    if cfg.DATASETS.CUSTOM:  # the one place DATASETS.CUSTOM is read
        from ..data.datasets.custom import register_custom_datasets

        register_custom_datasets(cfg.DATASETS.CUSTOM)
    if freeze:
        cfg.freeze()
    return cfg
