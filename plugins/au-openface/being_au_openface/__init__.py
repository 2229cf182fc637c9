"""Being au_extractor ``openface``: OpenFace 2.x action units, normalised to one row per dataset frame.

Either runs ``FeatureExtraction`` (config ``binary``: the path of an OpenFace build, e.g. from its official
Docker image; Being cannot build OpenFace here, it needs network access to fetch its models) on the
dataset frames, or takes a CSV OpenFace already wrote for this clip (config ``csv``). Either way the CSV is
normalised: both header variants (with and without ``face_id``), leading spaces in names, rows re-indexed
to dataset frames (OpenFace counts from 1), one face per frame (the most confident), frames OpenFace
skipped kept as ``success = 0`` rows, AU columns an older OpenFace lacks written as 0.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from being_core import AUExtractor, StageConfig, StageContext, StageReport, hookimpl


class OpenFaceConfig(StageConfig):
    binary: str | None = Field(None, description="Path of OpenFace's FeatureExtraction executable.")
    csv: str | None = Field(None, description="An OpenFace CSV already made for this clip (absolute, or relative "
                                              "to the run folder).")
    timeout_s: float = Field(3600, gt=0, le=7 * 86400, description="Longest FeatureExtraction may run.")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.binary is None) == (self.csv is None):
            raise ValueError("set exactly one of binary (run OpenFace) or csv (use its output)")
        return self


class OpenFaceAUs(AUExtractor[OpenFaceConfig]):
    """OpenFace FeatureExtraction action units, normalised to one row per frame."""

    name = "openface"
    version = "0.1.0"
    inputs = ("ori_imgs/*.jpg",)
    test_config = {"csv": "openface/au.csv"}

    @classmethod
    def contract_config(cls, workdir):
        from being_core.testing import find_testdata

        return {"csv": str(find_testdata() / "openface" / "pyfeat_OpenFace_Test.csv")}

    def run(self, ctx: StageContext[OpenFaceConfig]) -> StageReport:
        from pathlib import Path

        from being_core.au import write_au_csv

        from .normalise import normalise, run_feature_extraction

        cfg = ctx.config
        n, fps = ctx.dataset.n_frames, ctx.dataset.fps
        if cfg.csv is not None:
            path = Path(cfg.csv) if Path(cfg.csv).is_absolute() else ctx.root / cfg.csv
            if not path.is_file():
                raise ValueError(f"csv: {path} does not exist")
        else:
            assert cfg.binary is not None  # the config demands csv or binary
            path = run_feature_extraction(Path(cfg.binary), ctx.root / "ori_imgs", n, ctx.state, cfg.timeout_s,
                                          ctx.progress)
        rows, report = normalise(path, n)
        write_au_csv(ctx.output("au.csv"), rows, fps)
        return StageReport(metrics=report, info={"source": str(path)})


@hookimpl
def being_register_stages(registry):
    registry.add(OpenFaceAUs)
