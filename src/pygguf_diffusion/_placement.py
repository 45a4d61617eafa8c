"""Memory options shared by the API and the CLI, checked before anything loads: llama.cpp's tensor
overrides (`-ot PATTERN=DEVICE[,PATTERN=DEVICE...]`), the KV store's element types, and ggml RPC servers
(`--rpc HOST:PORT[,HOST:PORT...]`)."""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

# the types every backend's flash attention reads (the engine checks head dims against their blocks)
KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")


def check_overrides(overrides: Sequence[Any]) -> list[tuple[str, str]]:
    """(regex, device) pairs, validated: ValueError naming the bad entry. The device names are checked by
    the engine against the devices actually in use."""
    if isinstance(overrides, (str, bytes)):
        raise ValueError("tensor_overrides must be a sequence of (pattern, device) pairs; for the CLI's "
                         "'PATTERN=DEVICE,...' text use parse_overrides")
    if overrides is None:
        return []
    if not isinstance(overrides, Iterable):
        raise ValueError(f"tensor_overrides must be a sequence of (pattern, device) pairs, got {overrides!r:.60}")
    out: list[tuple[str, str]] = []
    for item in overrides:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise ValueError(f"tensor_overrides: {item!r} is not a (pattern, device) pair of strings")
        pattern, device = item
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"tensor_overrides: bad regular expression {pattern!r}: {e}") from None
        if not pattern or not device.strip():
            raise ValueError(f"tensor_overrides: {item!r}: empty pattern or device")
        out.append((pattern, device.strip()))
    return out


def parse_overrides(texts: Iterable[str]) -> list[tuple[str, str]]:
    """'PATTERN=DEVICE[,PATTERN=DEVICE...]' arguments (repeatable) as (pattern, device) pairs, in order."""
    pairs: list[tuple[str, str]] = []
    for text in texts:
        for part in text.split(","):
            pattern, sep, device = part.rpartition("=")
            if not sep or not pattern or not device:
                raise ValueError(f"'{part}' is not PATTERN=DEVICE (e.g. 'ffn_.*_exps=CPU')")
            pairs.append((pattern, device))
    return check_overrides(pairs)


def check_rpc_servers(servers: str | Sequence[str] | None) -> list[str]:
    """'host:port' endpoints (a comma-separated string or a sequence), validated: ValueError naming the bad
    one. Whether each answers is checked when the model loads."""
    if servers is None:
        return []
    if isinstance(servers, str):
        servers = [s for s in servers.split(",") if s.strip()] if servers.strip() else []
    if isinstance(servers, bytes) or not isinstance(servers, Iterable):
        raise ValueError(f"rpc_servers must be 'host:port' strings, got {servers!r:.60}")
    out = []
    for s in servers:
        if not isinstance(s, str):
            raise ValueError(f"rpc_servers: {s!r} is not a 'host:port' string")
        host, sep, port = s.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"rpc_servers: '{s}' is not HOST:PORT with a port in 1..65535 (e.g. 192.168.1.7:50052)")
        out.append(s.strip())
    return out
