"""Small JSON records beside the instance's run state (`/run/xdpbr[-INSTANCE]/...`), written
atomically and only when their content changed, so a reconcile that decides the same thing
writes nothing. Used for each bridge's netfilter decision and tc policies."""

import json
import os

_written = {}  # path -> the bytes this process last wrote there


def save(path, value):
    data = json.dumps(value).encode()
    if _written.get(path) == data and os.path.exists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)
    _written[path] = data


def load(path):
    """The saved value, or None when there is none (or it cannot be read)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def forget(path):
    _written.pop(path, None)
    try:
        os.unlink(path)
    except OSError:
        pass
