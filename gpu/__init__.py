"""Video generation: the generator contract, backends, frame markers and GPU pools."""

from gpu.factory import build_generator
from gpu.frame_marker import FrameMarker, draw_marker, marker_region, read_marker
from gpu.generator import (
    ContinuationState,
    Generator,
    GeneratorError,
    IncompatibleStateError,
    SegmentRequest,
    SegmentResult,
    StepCallback,
)
from gpu.pool import (
    GpuPool,
    InProcessGpuPool,
    PoolAssignment,
    PoolError,
    PoolUnavailableError,
    SessionNotBoundError,
)
from gpu.synthetic import SyntheticGenerator

__all__ = [
    "ContinuationState",
    "FrameMarker",
    "Generator",
    "GeneratorError",
    "GpuPool",
    "InProcessGpuPool",
    "IncompatibleStateError",
    "PoolAssignment",
    "PoolError",
    "PoolUnavailableError",
    "SegmentRequest",
    "SegmentResult",
    "SessionNotBoundError",
    "StepCallback",
    "SyntheticGenerator",
    "build_generator",
    "draw_marker",
    "marker_region",
    "read_marker",
]
