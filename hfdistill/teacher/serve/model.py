"""What the served model's configuration says, read before any server starts: its family (`model_type`) and
its context length (`max_position_embeddings`). From a local directory, or config.json alone from the
Hugging Face Hub (no weights are downloaded here; vLLM fetches them when it starts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hfdistill.core.errors import ConfigError

__all__ = ["ModelConfig", "read_model_config"]


@dataclass(frozen=True)
class ModelConfig:
    """The parts of a model's config.json the server's flags depend on."""

    model: str  # as vLLM is given it: an absolute directory, or the Hub id
    local: bool
    model_type: str | None
    max_position_embeddings: int | None


def read_model_config(model: str) -> ModelConfig:
    """Read MODEL's config.json (a directory, else a Hub id); a bad one is a ConfigError naming the fix."""
    path = Path(model).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise ConfigError(f"--serve {model} is a directory without a config.json; pass a model directory (as "
                              "save_pretrained writes one) or a Hugging Face model id")
        return _parsed(str(path.resolve()), True, config)
    return _parsed(model, False, _from_hub(model))


def _from_hub(model: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(model, "config.json"))
    except HFValidationError:
        raise ConfigError(f"--serve {model} is neither a directory nor a Hugging Face model id") from None
    except LocalEntryNotFoundError as e:  # offline (HF_HUB_OFFLINE) and not in the cache, or no network
        raise ConfigError(f"cannot read {model}'s config.json: not in the Hugging Face cache and the Hub cannot be "
                          f"reached ({_first(e)}); download it first, or pass a local directory") from None
    except HfHubHTTPError as e:  # 404 (no such model), 401/403 (gated: HF_TOKEN), 5xx
        raise ConfigError(f"cannot read {model}'s config.json from the Hugging Face Hub ({_first(e)}); check the "
                          "model id, and HF_TOKEN for a gated model") from None
    except OSError as e:  # a cache directory that cannot be written
        raise ConfigError(f"cannot download {model}'s config.json ({e}); check HF_HOME") from None


def _parsed(model: str, local: bool, path: Path) -> ModelConfig:
    try:
        config: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path} ({e}); is {model} a model?") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} is not a model configuration (a JSON object); is {model} a model?")
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    window = config.get("max_position_embeddings", text.get("max_position_embeddings"))
    model_type = config.get("model_type")
    return ModelConfig(model, local, model_type if isinstance(model_type, str) else None,
                       window if isinstance(window, int) and window > 0 else None)


def _first(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
