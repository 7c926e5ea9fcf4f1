"""`build_app(args)`: what serve_config.yaml imports (`deployments.app:build_app`)."""

from __future__ import annotations

import logging
import math
from typing import Any, cast

from ray.serve import Application, Deployment

from deployments.camera_worker import CameraWorkerDeployment
from deployments.detector import DetectorDeployment
from deployments.encoder import EncoderDeployment
from deployments.events import EventsDeployment, runtime_config
from deployments.gateway import GatewayDeployment
from deployments.ingest import IngestDeployment
from gateway.auth.bootstrap import ADMIN_PASSWORD_ENV
from gateway.auth.oidc import CLIENT_SECRET_ENV
from hls.hwaccel import hwaccel_problems
from hls.video_path import recording_plan
from pipeline.config import (
    CameraConfig,
    ConfigError,
    DetectorConfig,
    DetectorRuntime,
    PipelineArgs,
    camera_path,
    missing_files,
    parse_args,
)

log = logging.getLogger(__name__)
SECRET_ENV_VARS = (ADMIN_PASSWORD_ENV, CLIENT_SECRET_ENV)


def build_app(args: dict[str, Any] | PipelineArgs) -> Application:
    """Validate the args and wire the cameras (worker groups for `boxes: browser`, else one ingest and one
    encoder per camera), a shared detector, the events stage and the gateway."""
    cfg = parse_args(args)
    problems = missing_files(cfg)  # the same checks as `lookout check`, so `serve run` refuses what it refuses
    if problems:
        raise ConfigError("invalid Lookout config:\n" + "\n".join(f"  {p}" for p in problems))
    # Not refused: in a cluster an unpinned camera may run on another node that has the device.
    for problem in hwaccel_problems(cfg):
        log.warning("%s (this node; the camera's ffmpeg fails and says so in its status on a node without it)", problem)
    for cam in cfg.cameras:  # a re-encoded camera runs outside the camera workers, which record
        recorded, why = recording_plan(cam, cfg.hls, cfg.record)
        if cam.enabled and not recorded and cfg.record.for_camera(cam).enabled:
            log.warning("camera %s: not recorded: %s", cam.id, why)
    det = cfg.detector
    _check_autoscaling_reach(cfg)
    # Each stage is bound only what it needs; the admin password and the OIDC client secret (in the
    # config or the Ray head's environment) stay in the gateway.
    detector = _secretless(
        DetectorDeployment, detector_options(det), user_config=DetectorRuntime.of(det).user_config()
    ).bind(cfg.for_detector())
    stages = []
    for name, group in camera_groups(cfg):
        worker = _secretless(CameraWorkerDeployment, ingest_options(group[0]), name=name)
        stages.append(worker.bind(cfg.for_group([c.id for c in group]), detector))
    for cam in cfg.cameras:
        if not cam.enabled or worker_camera(cam, cfg):
            continue
        ingest = _secretless(IngestDeployment, ingest_options(cam), name=f"ingest-{cam.id}")
        stages.append(ingest.bind(cfg.for_camera(cam.id), cam.id, detector))
        if cfg.hls.enabled:
            stages.append(_secretless(EncoderDeployment, name=f"encoder-{cam.id}").bind(cfg.for_camera(cam.id), cam.id))
    if cfg.events.enabled:
        stages.append(_secretless(EventsDeployment, user_config=runtime_config(cfg)).bind(cfg.for_events()))
    gateway = cast(Deployment, GatewayDeployment).options(max_ongoing_requests=cfg.gateway.max_ongoing_requests)
    return gateway.bind(cfg, detector, *stages)


def worker_camera(cam: CameraConfig, cfg: PipelineArgs) -> bool:
    """Whether the camera runs in a camera worker (its video copied into HLS by one ffmpeg) rather than
    through ingest + encoder. Without HLS there is nothing to copy into: the plain ingest reads it."""
    return cam.enabled and cfg.hls.enabled and camera_path(cam, cfg.hls)[0] == "worker"


def camera_groups(cfg: PipelineArgs) -> list[tuple[str, list[CameraConfig]]]:
    """(deployment name, cameras) of each camera worker: up to cfg.cameras_per_replica cameras each, in
    config order, grouped only with cameras placed alike (node resource, node labels, standbys), named
    cameras-0, cameras-1, ... in the order of their first camera."""
    by_placement: dict[tuple, list[list[CameraConfig]]] = {}
    for cam in cfg.cameras:
        if not worker_camera(cam, cfg):
            continue
        key = (cam.node_resource, tuple(sorted((cam.node_labels or {}).items())), cam.standby_replicas)
        groups = by_placement.setdefault(key, [[]])
        if len(groups[-1]) >= cfg.cameras_per_replica:
            groups.append([])
        groups[-1].append(cam)
    ordered = sorted((g for gs in by_placement.values() for g in gs), key=lambda g: cfg.cameras.index(g[0]))
    return [(f"cameras-{i}", g) for i, g in enumerate(ordered)]


def without_secret_env(deployment: Deployment, opts: dict[str, Any] | None = None) -> dict[str, Any]:
    """`opts` (Serve options of `deployment`) with its replicas started with the secret environment
    variables blanked: workers inherit the Ray head's environment, and only the gateway needs them."""
    opts = opts or {}
    actor = dict(opts.get("ray_actor_options") or deployment.ray_actor_options or {})
    runtime_env = dict(actor.get("runtime_env") or {})
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **{name: "" for name in SECRET_ENV_VARS}}
    return {**opts, "ray_actor_options": {**actor, "runtime_env": runtime_env}}


def _secretless(cls: Any, opts: dict[str, Any] | None = None, **more: Any) -> Deployment:
    """The @serve.deployment class `cls` with `opts` and `more` as its options, its replicas started without
    the secret environment (`without_secret_env`). The cast: mypy does not apply class decorators."""
    deployment = cast(Deployment, cls)
    return deployment.options(**without_secret_env(deployment, opts), **more)


def detector_options(det: DetectorConfig) -> dict[str, Any]:
    """Serve options of the detector: fixed replicas or autoscaling, a GPU when asked, spread over nodes."""
    opts: dict[str, Any] = {"ray_actor_options": {"num_cpus": det.num_cpus, "num_gpus": det.num_gpus}}
    if det.autoscaling is not None:
        opts["autoscaling_config"] = det.autoscaling.serve_config()
    else:
        opts["num_replicas"] = det.num_replicas
    if det.max_replicas_per_node is not None:
        opts["max_replicas_per_node"] = det.max_replicas_per_node
    return opts


def _check_autoscaling_reach(cfg: PipelineArgs) -> None:
    """Warn when the cameras cannot keep enough frames waiting to ever reach detector.autoscaling.max_replicas."""
    scaling = cfg.detector.autoscaling
    if scaling is None:
        return
    waiting = sum(1 for c in cfg.cameras if c.enabled and c.detect) * cfg.detector.max_inflight_per_camera
    reach = max(scaling.min_replicas, min(scaling.max_replicas, math.ceil(waiting / scaling.target_ongoing_requests)))
    if reach < scaling.max_replicas:
        log.warning(
            "detector autoscaling: the cameras keep at most %d frames waiting (cameras x "
            "max_inflight_per_camera %d), so with target_ongoing_requests %g it never goes past %d of "
            "max_replicas %d; raise max_inflight_per_camera",
            waiting,
            cfg.detector.max_inflight_per_camera,
            scaling.target_ongoing_requests,
            reach,
            scaling.max_replicas,
        )


def ingest_options(cam: CameraConfig) -> dict[str, Any]:
    """Serve options of a camera's ingest (or of a camera worker, whose cameras are all placed like `cam`):
    pinned to its node (resource or labels); standbys on other nodes."""
    # A token CPU: ingest is light, and dozens of cameras must fit beside the detector on a small box.
    actor: dict[str, Any] = {"num_cpus": 0.01}
    if cam.node_resource:
        actor["resources"] = {cam.node_resource: 0.01}
    if cam.node_labels:
        actor["label_selector"] = dict(cam.node_labels)
    opts: dict[str, Any] = {"ray_actor_options": actor, "num_replicas": 1 + cam.standby_replicas}
    if cam.standby_replicas:
        opts["max_replicas_per_node"] = 1  # a standby on the reader's node would die with it
    return opts
