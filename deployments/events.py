"""The events stage's Serve adapter: one replica running pipeline.events_service.EventsService.

ONE replica: the service is the only writer of the history SQLite file. Rules, zones and tracker settings
are its `user_config`, applied in `reconfigure()`; the gateway queries history through this handle.
"""

from __future__ import annotations

from ray import serve

from deployments.common import redis_client, setup_logging
from hls.clips import ClipMaker, EventClipper, SegmentIndex
from hls.store import make_store
from pipeline.config import EventsStageArgs
from pipeline.events_service import EventsService, runtime_config

__all__ = ["EventsDeployment", "runtime_config"]


@serve.deployment(
    name="events",
    num_replicas=1,
    max_ongoing_requests=32,
    health_check_period_s=10,
    ray_actor_options={"num_cpus": 0.05},
    logging_config={"enable_access_log": False},
)
class EventsDeployment:
    """Wires the events service: its Redis, its clip maker over the HLS store, Serve's calls."""

    def __init__(self, args: EventsStageArgs):
        setup_logging()
        client = redis_client(args)
        clipper = None
        if args.hls.enabled:
            maker = ClipMaker(
                args.clips, make_store(args.hls, client, args.base_dir), SegmentIndex(client), base_dir=args.base_dir
            )
            clipper = EventClipper(maker, args.detecting)
        self.service = EventsService(args, client, clipper)

    def reconfigure(self, user_config: dict) -> None:
        self.service.reconfigure(user_config)

    def rules(self) -> list[dict]:
        return self.service.rules()

    def query_history(self, params: dict) -> dict:
        return self.service.query_history(params)

    def counts(self, params: dict) -> dict:
        return self.service.counts(params)

    def stats(self) -> dict:
        return self.service.stats()

    def check_health(self) -> None:
        self.service.check_health()

    def __del__(self) -> None:
        if getattr(self, "service", None) is not None:
            self.service.close()
