"""docs/grafana-dashboard.json only queries series and labels the code really exports at /metrics."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.testclient import TestClient

from gateway.api.metrics import make_routes
from pipeline.metrics import SPECS, Metrics

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
NAME_RE = re.compile(r"\b(lookout_[a-z0-9_]+)\b")
SELECTOR_RE = re.compile(r"\b(lookout_[a-z0-9_]+)\{([^}]*)\}")
BY_RE = re.compile(r"\bby \(([^)]*)\)")
PROMQL_LABELS = {"le"}


def recording_sites() -> list[tuple[str, str, set[str]]]:
    """(method, metric, label names) of every Metrics.inc/set/observe("lookout_...", ...) call in the code."""
    sites = []
    for folder in ("pipeline", "deployments", "gateway", "hls"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("inc", "set", "observe")
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and str(node.args[0].value).startswith("lookout_")
                ):
                    sites.append((node.func.attr, node.args[0].value, {k.arg for k in node.keywords if k.arg}))
    return sites


def exported(redis_client) -> dict[str, set[str]]:
    """Sample name -> label names, from the real /metrics route after one update at every recording site."""
    m = Metrics(redis_client, flush_interval_s=3600)
    for method, name, labels in recording_sites():
        getattr(m, method)(name, 1.0, **{k: "x" for k in labels})
    m.flush()
    app = Starlette(routes=make_routes(SimpleNamespace(redis=redis_client)))
    text = TestClient(app).get("/metrics").text
    out: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
    out += [("variable " + v["name"], v["definition"]) for v in dash["templating"]["list"] if v.get("definition")]
    return out


def test_the_code_records_every_metric_it_declares():
    recorded = {name for _m, name, _l in recording_sites()}
    assert set(SPECS) - recorded == {"lookout_redis_used_memory_bytes"}  # that one the /metrics route adds


def test_every_series_and_label_in_the_dashboard_is_exported(redis_client):
    series = exported(redis_client)
    assert "lookout_redis_used_memory_bytes" in series and "lookout_stage_latency_seconds_bucket" in series
    problems = []
    for title, expr in exprs():
        names = NAME_RE.findall(expr)
        assert names, f"{title}: no lookout_ metric in {expr!r}"
        for name in names:
            if name not in series:
                problems.append(f"{title}: {name} is not exported")
        for name, body in SELECTOR_RE.findall(expr):
            for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*=~?", body):
                if label not in series.get(name, set()):
                    problems.append(f"{title}: {name} has no label {label!r}")
        for by in BY_RE.findall(expr):
            have = set().union(*(series.get(n, set()) for n in names)) | PROMQL_LABELS
            problems += [
                f"{title}: no metric in it has label {lab!r}"
                for lab in (x.strip() for x in by.split(","))
                if lab and lab not in have
            ]
    assert not problems, "\n".join(problems)


def test_every_declared_metric_has_a_panel():
    used = {n for _t, e in exprs() for n in NAME_RE.findall(e)}
    base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert set(SPECS) <= base, f"metrics without a panel: {sorted(set(SPECS) - base)}"


def test_panels_are_well_formed():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["title"] and p["targets"] and p["datasource"]["uid"] == "${datasource}"
        assert [t["refId"] for t in p["targets"]] == [chr(65 + i) for i in range(len(p["targets"]))]
