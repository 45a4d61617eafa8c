from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ConversionError


def load_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from a checkpoint file, or a ConversionError saying which file and why."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConversionError(f"{path}: missing {what}; is this a complete Hugging Face checkpoint directory?") from e
    except (OSError, UnicodeDecodeError, ValueError) as e:   # JSONDecodeError is a ValueError (so is a
        raise ConversionError(f"{path}: cannot read {what}: {e}") from e   # 5000-digit integer)
    except RecursionError:
        raise ConversionError(f"{path}: cannot read {what}: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: {what} is not a JSON object")
    return data
