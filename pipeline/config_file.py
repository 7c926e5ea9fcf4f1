"""Reading a serve_config.yaml: the Lookout application's `args`, with Serve's own keys checked."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.config import ConfigError, unknown_field_hint


def load_app_args(config_path: str) -> dict:
    """The `args` of the Lookout application in a serve_config.yaml, with `base_dir` (where relative
    paths are taken from) defaulting to the config file's folder. A YAML syntax error, a misspelled
    Serve key (`argz:`) or a missing Lookout application is a ConfigError of one line per problem."""
    import yaml

    try:
        with open(config_path) as f:
            doc = yaml.safe_load(f) or {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{config_path}:{mark.line + 1}:{mark.column + 1}" if mark else config_path
        raise ConfigError(f"{where}: YAML syntax error: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config_path}: YAML error: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise ConfigError(f"{config_path}: {exc.strerror}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{config_path}: expected a Serve config (a mapping with `applications:`)")
    problems = unknown_serve_keys(doc)
    for app in doc.get("applications") or []:
        if isinstance(app, dict) and str(app.get("import_path", "")).startswith("deployments.app"):
            if problems:
                raise ConfigError("\n".join(problems))
            args = dict(app.get("args") or {})
            folder = Path(config_path).resolve().parent
            args["base_dir"] = str(folder / os.path.expanduser(args.get("base_dir") or "."))
            return args
    problems.append("no application with import_path deployments.app:build_app")
    raise ConfigError("\n".join(problems))


def unknown_serve_keys(doc: dict) -> list[str]:
    """Keys Ray Serve's config does not know (it ignores them silently), each with the nearest known one."""
    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

    def unknown(d: dict, known: list[str], where: str) -> list[str]:
        return [f"{where}{k}: unknown field{unknown_field_hint(str(k), known)}" for k in d if k not in known]

    problems = unknown(doc, list(ServeDeploySchema.model_fields), "")
    for i, app in enumerate(doc.get("applications") or []):
        if isinstance(app, dict):
            problems += unknown(app, list(ServeApplicationSchema.model_fields), f"applications.{i}.")
    return problems
