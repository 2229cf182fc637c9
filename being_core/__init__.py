"""Being core: stage interfaces, the plugin registry, configs, runs and ingest. No model code lives here."""

__version__ = "0.1.0"

from .hookspecs import hookimpl  # noqa: E402
from .stage import (  # noqa: E402
    AudioEncoder,
    AUExtractor,
    FaceTracker,
    Refiner,
    Stage,
    StageConfig,
    StageContext,
    StageKind,
    StageReport,
    TeethSegmenter,
    Trainer,
)

__all__ = [
    "AUExtractor", "AudioEncoder", "FaceTracker", "Refiner", "Stage", "StageConfig", "StageContext",
    "StageKind", "StageReport", "TeethSegmenter", "Trainer", "__version__", "hookimpl",
]
