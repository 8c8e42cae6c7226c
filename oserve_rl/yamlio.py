"""Reading YAML files the project's way: one ``ConfigError`` naming the file for any problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from oserve_rl.errors import ConfigError


def read_yaml(path: str | Path, hint: str = "") -> Any:
    """Parsed contents of ``path``; a missing file or bad YAML is a ``ConfigError`` (``hint`` is appended)."""
    p = Path(path)
    try:
        with open(p) as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found{hint}") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, not a YAML file{hint}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None


def read_yaml_mapping(path: str | Path, what: str = "a mapping", hint: str = "") -> dict[str, Any]:
    """``read_yaml`` for files holding a mapping (an empty file is ``{}``)."""
    data = read_yaml(path, hint)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected {what}, got {type(data).__name__}")
    return data
