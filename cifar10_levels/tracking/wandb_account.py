"""Which W&B mode a run uses: the user's WANDB_MODE, else online only with an API key (from the
environment or ~/.netrc) that the server accepts now, else offline."""
from __future__ import annotations

import base64
import json
import netrc
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlparse

from ..errors import UserError

WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")
KEY_CHECK_SECONDS = 5.0      # wandb itself waits ~90 s for a server that never answers


def wandb_base_url() -> str:
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").rstrip("/")


def wandb_api_key() -> str | None:
    """WANDB_API_KEY, else the ~/.netrc entry `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    try:
        entry = netrc.netrc(os.environ.get("NETRC")).authenticators(urlparse(wandb_base_url()).hostname)
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry else None


def check_wandb_key(key: str, timeout: float = KEY_CHECK_SECONDS) -> str:
    """'ok', 'rejected' or 'unreachable', from one short GraphQL call (the query `wandb login` makes)."""
    request = urllib.request.Request(
        wandb_base_url() + "/graphql", data=json.dumps({"query": "query { viewer { id } }"}).encode(),
        headers={"Content-Type": "application/json",
                 "Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            viewer = json.loads(response.read() or b"{}").get("data", {}).get("viewer")
    except urllib.error.HTTPError as err:
        return "rejected" if err.code in (401, 403) else "unreachable"
    except (OSError, ValueError):
        return "unreachable"
    return "ok" if viewer else "rejected"


def online_mode_problem(timeout: float = KEY_CHECK_SECONDS) -> str | None:
    """With WANDB_MODE=online, why W&B cannot log online now (no key, a key the server rejects, no
    server): wandb itself would wait ~90 s before it gives up. None when it can, or another mode."""
    if os.environ.get("WANDB_MODE") != "online":
        return None
    host = urlparse(wandb_base_url()).hostname
    key = wandb_api_key()
    if not key:
        reason = f"no API key (WANDB_API_KEY is unset and ~/.netrc has none for {host})"
    else:
        status = check_wandb_key(key, timeout)
        if status == "ok":
            return None
        reason = f"{host} {'rejected the API key' if status == 'rejected' else 'could not be reached'}"
    return (f"WANDB_MODE=online: {reason}; fix the key (wandb login) or the network, or set "
            "WANDB_MODE=offline (or unset it) to log offline")


@dataclass
class WandbMode:
    mode: str | None          # None: the user's WANDB_MODE, left to wandb
    warning: str | None = None


def choose_wandb_mode(timeout: float = KEY_CHECK_SECONDS) -> WandbMode:
    """The user's WANDB_MODE wins; otherwise online only with a key the server accepts now."""
    user_mode = os.environ.get("WANDB_MODE")
    if user_mode == "":
        del os.environ["WANDB_MODE"]  # wandb rejects an empty mode; treat it as unset
    elif user_mode:
        if user_mode not in WANDB_MODES:
            raise UserError(f"WANDB_MODE={user_mode}: not a W&B mode; use online, offline or "
                            "disabled, or unset it")
        problem = online_mode_problem(timeout)
        if problem is not None:
            raise UserError(problem)
        return WandbMode(None)
    key = wandb_api_key()
    if not key:
        return WandbMode("offline")
    status = check_wandb_key(key, timeout)
    if status == "ok":
        return WandbMode("online")
    host = urlparse(wandb_base_url()).hostname
    reason = "rejected the API key" if status == "rejected" else "could not be reached"
    return WandbMode("offline", f"warning: W&B ({host}) {reason}; logging offline instead")
