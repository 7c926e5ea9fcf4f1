"""Coverage by layer after a test run (`make test`): statements run by the tests, per top-level package.

Measures the pytest process only: code that runs inside Ray replicas or other subprocesses (the
deployments under `serve run`, the e2e apps) counts as not run, so the figures are a floor."""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGES = ("pipeline", "hls", "gateway", "deployments")


def summary(data_file: Path) -> list[tuple[str, int, int]]:
    """(package, statements, statements run) per package, then the total."""
    import coverage

    cov = coverage.Coverage(data_file=str(data_file))
    cov.load()
    root = Path.cwd().resolve()
    totals = {p: [0, 0] for p in PACKAGES}
    for name in cov.get_data().measured_files():
        try:
            rel = Path(name).resolve().relative_to(root)
        except ValueError:
            continue
        if rel.parts[0] not in totals:
            continue
        _, statements, _, missing, _ = cov.analysis2(name)
        totals[rel.parts[0]][0] += len(statements)
        totals[rel.parts[0]][1] += len(statements) - len(missing)
    rows = [(p, n, hit) for p, (n, hit) in totals.items()]
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    return rows


def main(argv: list[str]) -> int:
    data_file = Path(argv[0] if argv else ".coverage")
    if not data_file.is_file():
        print(f"no coverage data at {data_file}", file=sys.stderr)
        return 1
    print("coverage, statements the pytest process ran (Ray replicas and subprocesses not measured):")
    for package, n, hit in summary(data_file):
        print(f"  {package:<12} {100 * hit / max(n, 1):5.1f} %  ({hit} of {n})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
