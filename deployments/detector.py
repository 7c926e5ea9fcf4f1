"""The batched detector's Serve adapter: calls batched across cameras, each batch run by
pipeline.detector_service.DetectorService."""

from __future__ import annotations

import asyncio
import logging

from ray import serve

from deployments.common import redis_client, setup_logging
from pipeline.config import DetectorRuntime, DetectorStageArgs
from pipeline.detector_service import SKIPPED_MISSING, SKIPPED_STALE, DetectorService
from pipeline.keys import UPLOAD_CAMERA
from pipeline.types import FrameRef

log = logging.getLogger(__name__)

__all__ = ["DetectorDeployment", "SKIPPED_MISSING", "SKIPPED_STALE", "UPLOAD_CAMERA"]


@serve.deployment(
    name="detector", max_ongoing_requests=64, health_check_period_s=10, logging_config={"enable_access_log": False}
)
class DetectorDeployment:
    """Runs the model on frames batched across cameras with @serve.batch."""

    def __init__(self, args: DetectorStageArgs):
        setup_logging()
        self.service = DetectorService(args, redis_client(args))
        detector = self.service.detector
        log.info(
            "detector ready: %s on %s, input %dx%d px",
            args.model.name,
            detector.backend.describe(),
            *detector.input_shape_px,
        )

    def reconfigure(self, user_config: dict) -> None:
        update = DetectorRuntime.model_validate(user_config)
        # @serve.batch's wrapper has these setters; its type hints do not say so
        if update.max_batch_size is not None:
            self.detect.set_max_batch_size(update.max_batch_size)  # type: ignore[attr-defined]
        if update.batch_wait_timeout_s is not None:
            self.detect.set_batch_wait_timeout_s(update.batch_wait_timeout_s)  # type: ignore[attr-defined]
        log.info("detector reconfigured: %s", update.user_config())

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def detect(self, refs: list[FrameRef]) -> list[int]:
        """Number of detections per frame, or a negative code when the frame was skipped."""
        return await asyncio.to_thread(self.service.run_batch, refs)

    async def detect_uploaded(self, ref: FrameRef) -> list[dict] | None:
        """Detections of an uploaded image put on the bus under UPLOAD_CAMERA, through the same
        batches as the cameras' frames; None when the frame was gone or stale."""
        if ref.camera_id != UPLOAD_CAMERA:
            raise ValueError(f"camera_id must be {UPLOAD_CAMERA!r}, got {ref.camera_id!r}")
        code = await self.detect(ref)
        return self.service.take_upload(ref.seq) if code >= 0 else None

    def stats(self) -> dict:
        return self.service.stats()
