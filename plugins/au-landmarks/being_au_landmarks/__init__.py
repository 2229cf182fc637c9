"""Being au_extractor ``landmarks``: action units from the tracked face mesh, no model weights.

Each frame's 478 landmarks are aligned (rotation, scale, translation) to the clip's mean shape on the points
speech and expression hardly move (``being_core.stage.FACEMESH_RIGID_POINTS``: forehead, nose, eye corners,
temples), so head pose drops out and a dropping jaw does not tilt the brows; geometric measures are taken in that
frame in units of the outer-eye-corner distance:

| AU | measure |
|---|---|
| AU01 inner brow raiser | inner brow (107, 336) height above the inner eye corners |
| AU02 outer brow raiser | outer brow (70, 300) height above the outer eye corners |
| AU04 brow lowerer | inner brows lowered and pulled together |
| AU05 upper lid raiser | eye opening above the subject's neutral |
| AU06 cheek raiser | cheeks (117, 346) raised toward the lower lids |
| AU07 lid tightener | eye opening below neutral, short of a blink |
| AU12 lip corner puller | mouth corners (61, 291) widened and raised relative to the lip centre |
| AU15 lip corner depressor | mouth corners lowered relative to the lip centre |
| AU20 lip stretcher | mouth widened without raised corners |
| AU25 lips part | inner-lip gap (13-14) |
| AU26 jaw drop | chin (152) to nose tip (1) distance |
| AU45 blink | eye closure (1 - eye aspect ratio, normalised) |

Calibration per subject: a measure's median over the clip is neutral (its 5th percentile for the openings
AU25 and AU26, which are never fully "off") and its 99th percentile maps to ``max_intensity`` on OpenFace's
0-5 scale; ``_c`` is 1 where the intensity reaches ``presence``. AU09,
AU10, AU14, AU17, AU23 and AU28 are not estimated and stay 0. Frames without a face get ``success = 0``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from being_core import AUExtractor, StageConfig, StageContext, StageReport, hookimpl


class LandmarkAUConfig(StageConfig):
    max_intensity: float = Field(3.0, gt=0, le=5, description="Intensity of a measure's 99th percentile.")
    presence: float = Field(1.0, gt=0, le=5, description="Intensity from which _c (presence) is 1.")
    smooth_frames: int = Field(1, ge=0, le=5, description="Half-width of the temporal median filter (0 = none).")
    align: Literal["upper-face", "all"] = Field(
        "upper-face", description="The points frames are aligned on: 'upper-face' (forehead, nose, eye corners, "
        "temples: what speech hardly moves); 'all' aligns every landmark, as au-landmarks 0.1.0 did.")


class LandmarkAUs(AUExtractor[LandmarkAUConfig]):
    """Action units from face-mesh geometry, calibrated per subject to OpenFace's scale (no weights)."""

    name = "landmarks"
    version = "0.2.0"
    inputs = ("face/landmarks.npy", "face/confidence.npy")
    requires = ("landmarks:facemesh-478",)

    def run(self, ctx: StageContext[LandmarkAUConfig]) -> StageReport:
        import numpy as np

        from being_core.au import write_au_csv
        from being_core.stage import FACEMESH_RIGID_POINTS

        from .measures import intensities

        cfg = ctx.config
        lm = np.load(ctx.input("face/landmarks.npy"))
        conf = np.load(ctx.input("face/confidence.npy"))
        n = ctx.dataset.n_frames
        if len(lm) != n:
            raise ValueError(f"face/landmarks.npy has {len(lm)} frames but the dataset has {n}")
        with ctx.progress.task("au: landmarks", total=1, unit="clip") as task:
            aus = intensities(lm, conf > 0, cfg.max_intensity, cfg.smooth_frames,
                              FACEMESH_RIGID_POINTS if cfg.align == "upper-face" else None)
            task.advance()
        rows = []
        for i in range(n):
            row = {"confidence": float(conf[i]), "success": int(conf[i] > 0)}
            for au, values in aus.items():
                row[f"{au}_r"] = float(values[i])
                row[f"{au}_c"] = int(values[i] >= cfg.presence)
            rows.append(row)
        write_au_csv(ctx.output("au.csv"), rows, ctx.dataset.fps)
        return StageReport(metrics={f"{au}_mean": round(float(v.mean()), 3) for au, v in aus.items()},
                           info={"estimated": sorted(aus)})


@hookimpl
def being_register_stages(registry):
    registry.add(LandmarkAUs)
