"""Being core: stage interfaces, the plugin registry, runners, configs, runs and ingest. No model code lives here."""

__version__ = "0.1.0"

from .commands import Command, CommandContext, Commands  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402
from .registry import Implementation, Registry  # noqa: E402
from .runners import Runner, RunnerOptions  # noqa: E402
from .stage import (  # noqa: E402
    Action,
    AudioEncoder,
    AUExtractor,
    DatasetFacts,
    FaceTracker,
    FrameFilter,
    RefineParams,
    Refiner,
    RenderParams,
    Resources,
    ScoreParams,
    Stage,
    StageConfig,
    StageContext,
    StageKind,
    StageReport,
    TeethSegmenter,
    Trainer,
)

__all__ = [
    "AUExtractor", "Action", "AudioEncoder", "Command", "CommandContext", "Commands", "DatasetFacts", "FaceTracker",
    "FrameFilter", "Implementation", "RefineParams", "Refiner", "Registry", "RenderParams", "Resources", "Runner",
    "RunnerOptions", "ScoreParams", "Stage", "StageConfig", "StageContext", "StageKind", "StageReport",
    "TeethSegmenter", "Trainer", "__version__", "hookimpl",
]
