"""Being face_tracker ``mediapipe``: FaceMesh landmarks and a head model fitted to the clip itself.

No Basel Face Model, no pytorch3d, no downloads: mediapipe 0.10.21 bundles its FaceMesh model, and the
morphable model (mean shape + expression basis) is learned from the clip's own landmarks.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from being_core import FaceTracker, StageConfig, StageContext, StageReport, hookimpl


class MediapipeConfig(StageConfig):
    max_faces: int = Field(4, ge=1, le=10, description="Faces FaceMesh looks for; the subject is followed.")
    min_confidence: float = Field(0.5, gt=0, lt=1, description="FaceMesh detection and tracking threshold.")
    max_missing_ratio: float = Field(
        0.1, ge=0, le=1, description="Largest share of frames without a face before the stage fails."
    )
    n_exp: int = Field(16, ge=1, le=64, description="Expression basis size learned from the clip.")
    iterations: int = Field(80, ge=10, le=10_000, description="Optimiser steps of the final pose/expression fit.")
    focal_factors: tuple[Annotated[float, Field(gt=0.1, le=20)], ...] = Field(
        (1.0, 1.5, 2.0, 2.5, 3.0, 4.0), min_length=1, max_length=32, description="Focal lengths searched, in image widths."
    )
    smooth: float = Field(1.0, ge=0, le=1000, description="Weight of the temporal smoothness of pose.")
    align: Literal["upper-face", "all"] = Field(
        "upper-face", description="Landmarks whose rigid motion is the head's pose: 'upper-face' (forehead, nose, "
        "eye corners, temples: what speech hardly moves); 'all' aligns every landmark, as face-mediapipe 0.2.0 "
        "did, where an open mouth also moved the tracked head about 1-2 % closer to the camera.")
    densify_level: int = Field(4, ge=1, le=8, description="Barycentric steps per mesh triangle for `vertices`.")
    parsing_variant: Literal["ernerf", "talkinggaussian"] = Field(
        "ernerf", description="'talkinggaussian' also paints the inner mouth grey and the hair black."
    )
    person_threshold: float = Field(0.5, gt=0, lt=1, description="Selfie-segmentation score that counts as person.")
    hair_margin: float = Field(0.25, ge=0, le=1, description="Head region reaches this share of the face width "
                                                             "beyond the face on each side (hair, ears).")


class MediapipeTracker(FaceTracker[MediapipeConfig]):
    """FaceMesh 478 landmarks, 68-point .lms, a head model fitted by reprojection, cameras for the trainers."""

    name = "mediapipe"
    version = "0.3.0"
    outputs = (*FaceTracker.outputs, "face/head_model.npz", "track_params.pt", "transforms_train.json",
               "transforms_val.json", "parsing/*.png", "bc.jpg", "gt_imgs/*.jpg", "torso_imgs/*.png")
    provides = ("landmarks:facemesh-478", "dataset:reference-layout", "dataset:split")
    actions = {"locate": FaceTracker.locate_action}
    test_config = {"iterations": 60, "focal_factors": [1.5, 2.5]}

    def locate(self, ctx: StageContext[MediapipeConfig]) -> StageReport:
        """The subject's face box in each sampled frame: MediaPipe's full-range face detector (faces far from
        the camera too), the largest face when there are several."""
        import json

        import cv2
        import mediapipe as mp

        from being_core.native import native_stderr_to

        boxes: list[list[float] | None] = []
        with native_stderr_to(ctx.log), mp.solutions.face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=ctx.config.min_confidence) as detector:
            for rel in ctx.params.frames:
                image = cv2.imread(str(ctx.input(rel)))
                if image is None:
                    raise ValueError(f"{rel} cannot be read")
                height, width = image.shape[:2]
                found = detector.process(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)).detections or []
                faces = []
                for detection in found:
                    b = detection.location_data.relative_bounding_box
                    x0, y0 = max(b.xmin, 0.0) * width, max(b.ymin, 0.0) * height
                    x1, y1 = min(b.xmin + b.width, 1.0) * width, min(b.ymin + b.height, 1.0) * height
                    faces.append([round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1)])
                boxes.append(max(faces, key=lambda f: (f[2] - f[0]) * (f[3] - f[1])) if faces else None)
        ctx.output("crop/faces.json").write_text(json.dumps({"boxes": boxes}))
        return StageReport(metrics={"frames_with_face": sum(b is not None for b in boxes), "frames": len(boxes)})

    def run(self, ctx: StageContext[MediapipeConfig]) -> StageReport:
        from being_core.native import native_stderr_to

        with native_stderr_to(ctx.log):
            return self._track(ctx)

    def _track(self, ctx: StageContext[MediapipeConfig]) -> StageReport:
        import json

        import numpy as np
        import torch

        from .fit import (
            REFERENCE_EULER,
            RIGID_POINTS,
            SEARCH_ITERATIONS,
            c2w_matrices,
            densify_weights,
            fit_head,
            to_reference_euler,
        )
        from .lm68 import MESH_TO_68
        from .track import detect, fill_gaps, missing_runs

        cfg = ctx.config
        n = ctx.dataset.n_frames
        width, height = ctx.dataset.width, ctx.dataset.height
        tracks = detect(_Frames(ctx, n), width, height, cfg.max_faces, cfg.min_confidence, ctx.progress)
        n_missing = int((~tracks.found).sum())
        if n_missing == n:
            raise ValueError(f"no face found in any of the {n} frames of ori_imgs/")
        if n_missing > cfg.max_missing_ratio * n:
            raise ValueError(f"no face in {n_missing} of {n} frames of ori_imgs/ (more than max_missing_ratio="
                             f"{cfg.max_missing_ratio:g}): frames {', '.join(missing_runs(tracks.found))}")
        if tracks.multi_face_frames:
            ctx.log.warning("more than one face in %d frames; following the largest, most consistent one",
                            len(tracks.multi_face_frames))
        landmarks = fill_gaps(tracks.landmarks, tracks.found)

        with ctx.progress.task("face: head model fit", total=SEARCH_ITERATIONS * len(cfg.focal_factors) + cfg.iterations,
                               unit="step") as task:
            fit = fit_head(landmarks, width, height, n_exp=cfg.n_exp, iterations=cfg.iterations,
                           focal_factors=cfg.focal_factors, smooth=cfg.smooth,
                           weights=tracks.found.astype(np.float32), progress=task,
                           rigid=RIGID_POINTS if cfg.align == "upper-face" else None)

        import mediapipe as mp

        dense = densify_weights(mp.solutions.face_mesh.FACEMESH_TESSELATION, landmarks.shape[1], cfg.densify_level)
        shapes = fit.mean[None] + np.einsum("nk,kvc->nvc", fit.exp, fit.basis)
        vertices = np.einsum("dv,nvc->ndc", dense, shapes).astype(np.float32)

        np.save(ctx.output("face/landmarks.npy"), landmarks.astype(np.float32))
        np.save(ctx.output("face/confidence.npy"), tracks.found.astype(np.float32))
        for i in range(n):
            np.savetxt(ctx.output(f"ori_imgs/{i}.lms"), landmarks[i, MESH_TO_68, :2], "%f")
        np.savez(ctx.output("face/head_model.npz"), mean=fit.mean, basis=fit.basis, dense_weights=dense,
                 found=tracks.found)
        torch.save({
            "id": torch.from_numpy(fit.mean.reshape(1, -1).copy()),
            "exp": torch.from_numpy(fit.exp.copy()),
            "euler": torch.from_numpy(to_reference_euler(fit.euler)),
            "euler_convention": REFERENCE_EULER,
            "trans": torch.from_numpy(fit.trans.copy()),
            "focal": torch.tensor([fit.focal], dtype=torch.float32),
            "vertices": torch.from_numpy(vertices),
        }, ctx.output("track_params.pt"))
        c2w = c2w_matrices(fit.euler.astype(np.float64), fit.trans.astype(np.float64))
        for name, ids in (("train", ctx.dataset.train_ids), ("val", ctx.dataset.val_ids)):
            doc = {"focal_len": fit.focal, "cx": width / 2.0, "cy": height / 2.0,
                   "frames": [{"img_id": i, "aud_id": i, "transform_matrix": c2w[i].tolist()} for i in ids]}
            ctx.output(f"transforms_{name}.json").write_text(json.dumps(doc, indent=1))

        parse_metrics = write_parsing(ctx, cfg, landmarks, n)

        err = fit.errors[tracks.found]
        jitter = np.abs(np.diff(fit.trans, 2, axis=0)).mean() * 100 if n > 2 else 0.0  # dm -> mm
        return StageReport(
            metrics={"reprojection_px_mean": round(float(err.mean()), 3),
                     "reprojection_px_p95": round(float(np.percentile(err, 95)), 3),
                     "pose_jitter_mm": round(float(jitter), 4),
                     "pose_jitter_deg": round(float(np.degrees(np.abs(np.diff(fit.euler, 2, axis=0)).mean())), 4)
                     if n > 2 else 0.0,
                     "focal": round(fit.focal, 1), "focal_search_px": fit.focal_search,
                     "focal_at_search_edge": fit.focal in (min(fit.focal_search), max(fit.focal_search)),
                     "frames_without_face": n_missing, "multi_face_frames": len(tracks.multi_face_frames),
                     **parse_metrics},
            info={"landmarks": 478, "vertices": int(vertices.shape[1]), "n_exp": int(fit.basis.shape[0]),
                  "focal": fit.focal, "missing_frames": missing_runs(tracks.found)},
        )


def write_parsing(ctx: StageContext[MediapipeConfig], cfg: MediapipeConfig, landmarks, n: int) -> dict:
    """parsing/<i>.png and bc.jpg (pass 1), then gt_imgs/<i>.jpg and torso_imgs/<i>.png (pass 2)."""
    import cv2
    import mediapipe as mp
    import numpy as np

    from .parsing import BackgroundEstimate, face_oval_loop, label, masks_from_parsing, paint, torso_rgba

    oval = face_oval_loop()
    frames = _Frames(ctx, n)
    background: BackgroundEstimate | None = None
    head_share = []
    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        for i in ctx.progress.track(range(n), "face: parsing", unit="frame"):
            rgb = frames[i]
            person = seg.process(rgb).segmentation_mask > cfg.person_threshold
            head, neck, torso = label(person, landmarks[i], oval, cfg.hair_margin)
            cv2.imwrite(str(ctx.output(f"parsing/{i}.png")),
                        paint(head, neck, torso, landmarks[i], oval, cfg.parsing_variant))
            if background is None:
                background = BackgroundEstimate(*person.shape)
            background.add(rgb[..., ::-1], head | neck | torso)
            head_share.append(head.mean())
    if background is None:
        raise ValueError("ori_imgs/ holds no frames")
    bc = background.result()
    cv2.imwrite(str(ctx.output("bc.jpg")), bc, [cv2.IMWRITE_JPEG_QUALITY, 95])
    for i in ctx.progress.track(range(n), "face: composites", unit="frame"):
        bgr = frames[i][..., ::-1]
        m = masks_from_parsing(cv2.imread(str(ctx.out / "parsing" / f"{i}.png")))
        gt = np.where(m["background"][..., None], bc, bgr)
        cv2.imwrite(str(ctx.output(f"gt_imgs/{i}.jpg")), gt, [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(ctx.output(f"torso_imgs/{i}.png")), torso_rgba(bgr, m["head"], m["neck"], m["torso"],
                                                                       landmarks[i]))
    return {"head_pixels_share_mean": round(float(np.mean(head_share)), 4)}


class _Frames:
    """Frames read on demand as RGB ``[H, W, 3] uint8`` (bounded memory for long clips)."""

    def __init__(self, ctx: StageContext, n: int):
        self.ctx, self.n = ctx, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import cv2

        image = cv2.imread(str(self.ctx.input(f"ori_imgs/{i}.jpg")))
        if image is None:
            raise ValueError(f"ori_imgs/{i}.jpg cannot be read")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@hookimpl
def being_register_stages(registry):
    registry.add(MediapipeTracker)
