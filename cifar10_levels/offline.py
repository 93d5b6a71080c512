"""Fail fast, with a fix to try, when the Hugging Face Hub cannot be reached."""
from __future__ import annotations

import os
import socket

HUB_HOST = "huggingface.co"


def hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def unavailable_reason() -> str:
    """Why the Hub is not used, for messages that must not blame a network never contacted."""
    if hub_offline():
        return "offline mode is set (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE), so the Hub is not contacted"
    return "huggingface.co cannot be reached"


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect instead of the libraries' 20-50 s of retries."""
    if hub_offline():
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def go_offline() -> None:
    """Make datasets/timm/huggingface_hub use only their local caches, at once."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:  # huggingface_hub reads the variable at import time
        import huggingface_hub.constants as constants
        constants.HF_HUB_OFFLINE = True
    except (ImportError, AttributeError):
        pass
