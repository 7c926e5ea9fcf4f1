"""docs/architecture.md stays true: every module, class, function and Redis key it names exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("pipeline", "hls", "gateway", "deployments", "tools")


def named() -> tuple[list[str], list[str]]:
    """(dotted names, paths) in the doc's `code` spans; other spans (settings, commands) are not names."""
    dotted, paths = [], []
    for span in re.findall(r"`([^`]+)`", DOC.read_text()):
        span = span.split("(")[0]
        if re.fullmatch(r"[\w./]+\.py|[\w/]+/", span):
            paths.append(span)
        elif re.fullmatch(r"[A-Za-z_][\w.]*", span) and span.split(".")[0] in (*PACKAGES, "keys"):
            dotted.append("pipeline." + span if span.startswith("keys.") else span)
    return dotted, paths


def resolve(name: str):
    """The object a dotted name names: the longest importable module, then attributes."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            # a Serve deployment names its class: `Deployment.func_or_class`
            obj = getattr(getattr(obj, "func_or_class", obj), attr)
        return obj
    raise ModuleNotFoundError(name)


def test_every_name_in_the_architecture_doc_exists():
    dotted, paths = named()
    assert len(dotted) > 40 and len(paths) >= 5  # the doc names things; the parser found them
    missing = []
    for name in dotted:
        try:
            resolve(name)
        except (ImportError, AttributeError) as exc:
            missing.append(f"{name}: {exc}")
    missing += [p for p in paths if not (ROOT / p).exists()]
    assert not missing, missing


def test_every_redis_key_it_names_is_a_key_function():
    dotted, _ = named()
    from pipeline import keys

    named_keys = {n.split(".")[-1] for n in dotted if n.startswith("pipeline.keys.")}
    assert "frames" in named_keys and "detections" in named_keys
    for k in named_keys:
        assert callable(getattr(keys, k)) or isinstance(getattr(keys, k), str), k
