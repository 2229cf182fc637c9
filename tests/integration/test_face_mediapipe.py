"""face_tracker 'mediapipe' on real clips."""

import json

import numpy as np
import pytest
import torch
from being_face_mediapipe.fit import euler2rot, pose, project, to_reference_euler
from conftest import FAST_FACE, make_video, prepare

from being_core.errors import InputError, StageFailed

FACE = [f"stages.face_tracker.config.{k}={v}" for k, v in FAST_FACE.items()]


def test_every_frame_has_landmarks(prepared_face5):
    lm = np.load(prepared_face5 / "face" / "landmarks.npy")
    assert lm.shape == (122, 478, 3) and lm.dtype == np.float32
    assert np.load(prepared_face5 / "face" / "confidence.npy").tolist() == [1.0] * 122
    for i in (0, 60, 121):
        lms = np.loadtxt(prepared_face5 / "ori_imgs" / f"{i}.lms")
        assert lms.shape == (68, 2)
        assert (lms >= 0).all() and (lms < 512).all()


def test_68_point_boxes_hold_the_mouth_and_eyes(prepared_face5):
    lm = np.load(prepared_face5 / "face" / "landmarks.npy")
    for i in range(0, 122, 10):
        lms = np.loadtxt(prepared_face5 / "ori_imgs" / f"{i}.lms")
        lips, eyes, jaw = lms[48:60], lms[36:48], lms[0:17]
        (x0, y0), (x1, y1) = lips.min(0), lips.max(0)
        for mouth_point in lm[i, [13, 14, 78, 308], :2]:  # inner-lip centre and corners of the mesh
            assert x0 - 1 <= mouth_point[0] <= x1 + 1 and y0 - 1 <= mouth_point[1] <= y1 + 1
        assert eyes[:, 1].max() < y0, "eyes above the mouth"
        face_width = jaw[:, 0].max() - jaw[:, 0].min()
        assert 0.25 < (x1 - x0) / face_width < 0.6
        assert lms[36, 0] < lms[45, 0], "iBUG order: subject's right eye (image left) first"


def test_reprojection_error_is_small(prepared_face5):
    metrics = json.loads((prepared_face5 / "being.json").read_text())["stages"]["face_tracker"]["metrics"]
    assert metrics["reprojection_px_mean"] < 2.0
    assert metrics["reprojection_px_p95"] < 4.0


def test_cameras_round_trip_to_the_landmarks(prepared_face5):
    params = torch.load(prepared_face5 / "track_params.pt")
    lm = np.load(prepared_face5 / "face" / "landmarks.npy")
    model = np.load(prepared_face5 / "face" / "head_model.npz")
    assert params["euler"].shape == (122, 3) and params["trans"].shape == (122, 3)
    assert params["exp"].shape[0] == 122 and params["focal"].shape == (1,)
    assert params["vertices"].shape[0] == 122 and params["vertices"].shape[1] >= 3000
    shape = torch.as_tensor(model["mean"] + np.einsum("nk,kvc->nvc", params["exp"].numpy(), model["basis"]))
    euler = torch.from_numpy(to_reference_euler(params["euler"].numpy()))  # track_params.pt: the reference's angles
    uv = project(pose(shape, euler, params["trans"]), params["focal"], 256.0, 256.0)
    assert (uv - torch.as_tensor(lm[..., :2])).norm(dim=-1).mean() < 2.0
    # The same points through transforms_*.json the way ER-NeRF-style readers use it (metres, c2w).
    train = json.loads((prepared_face5 / "transforms_train.json").read_text())
    val = json.loads((prepared_face5 / "transforms_val.json").read_text())
    assert [f["img_id"] for f in train["frames"]] == list(range(110))
    assert [f["aud_id"] for f in val["frames"]] == list(range(110, 122))
    assert (train["cx"], train["cy"]) == (256.0, 256.0)
    for frame in (train["frames"][5], val["frames"][-1]):
        i = frame["img_id"]
        w2c = np.linalg.inv(np.array(frame["transform_matrix"]))
        cam = (w2c[:3, :3] @ (shape[i].numpy().T / 10) + w2c[:3, 3:]).T
        u = 256.0 - train["focal_len"] * cam[:, 0] / cam[:, 2]
        v = 256.0 + train["focal_len"] * cam[:, 1] / cam[:, 2]
        assert np.abs(np.stack([u, v], 1) - lm[i, :, :2]).max() < 10
        assert (cam[:, 2] < 0).all(), "OpenGL camera: the head lies at negative z"
    rot = euler2rot(params["euler"])
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3).expand(122, 3, 3), atol=1e-5)


def test_dense_vertices_cover_the_face(prepared_face5):
    params = torch.load(prepared_face5 / "track_params.pt")
    verts = params["vertices"].mean(0)
    model = np.load(prepared_face5 / "face" / "head_model.npz")
    shapes = model["mean"] + np.einsum("nk,kvc->nvc", params["exp"].numpy(), model["basis"])
    lo, hi = shapes.mean(0).min(0), shapes.mean(0).max(0)
    assert (verts.numpy() >= lo - 1e-3).all() and (verts.numpy() <= hi + 1e-3).all()
    width = hi[0] - lo[0]
    assert 1.0 < width < 2.2, "a face is 10-22 cm wide in decimetre units"


def test_several_faces_follow_the_largest(being_testdata, tmp_path):
    video = make_video(tmp_path / "group.mp4", "-loop", "1", "-i", str(being_testdata / "images" / "pyfeat_multi_face.jpg"),
                       "-t", "2.4", "-r", "25", "-vf", "scale=1000:666", "-pix_fmt", "yuv420p")
    manifest = prepare(video, tmp_path / "run", [*FACE, "ingest.audio=optional", "ingest.crop=none",
                                                 "ingest.min_frames=10"])
    metrics = manifest.stages["face_tracker"]["metrics"]
    assert metrics["multi_face_frames"] > 0 and metrics["frames_without_face"] == 0


def test_a_clip_without_a_face_is_an_error_and_writes_nothing(tmp_path):
    video = make_video(tmp_path / "wall.mp4", "-f", "lavfi", "-i", "color=c=0x808070:s=256x256:d=2.4:r=25",
                       "-pix_fmt", "yuv420p")
    with pytest.raises(InputError) as err:  # the face-following crop finds none
        prepare(video, tmp_path / "run", [*FACE, "ingest.audio=optional", "ingest.min_frames=10"])
    assert str(err.value).startswith(f"no face found in any of the 9 frames sampled over {video} (ingest.crop: face")
    assert not (tmp_path / "run" / "ori_imgs").exists()
    with pytest.raises(StageFailed) as err:
        prepare(video, tmp_path / "run", [*FACE, "ingest.audio=optional", "ingest.min_frames=10", "ingest.crop=center"])
    assert str(err.value) == "face_tracker 'mediapipe' failed: ValueError: no face found in any of the 60 frames of ori_imgs/"
    assert not list((tmp_path / "run").glob("ori_imgs/*.lms")) and not (tmp_path / "run" / "track_params.pt").exists()


def test_the_crop_follows_a_face_off_centre(face5, prepared_face5, tmp_path):
    """face5 (524x524) placed right of centre in a 1200x720 frame: the face-following crop finds it, and the
    landmarks tracked in the crop land where the centred clip's do, once both are mapped to the wide frame."""
    left, top = 620, 100
    video = make_video(tmp_path / "wide.mp4", "-i", str(face5), "-vf", f"pad=1200:720:{left}:{top}:black",
                       "-c:a", "copy", "-pix_fmt", "yuv420p")
    manifest = prepare(video, tmp_path / "run", FACE)
    crop = manifest.stages["ingest"]["crop"]
    assert crop["mode"] == "face" and crop["x"] <= left + 150 and crop["x"] + crop["side"] >= left + 400
    wide = np.load(tmp_path / "run" / "face" / "landmarks.npy")[..., :2] * crop["side"] / 512 + [crop["x"], crop["y"]]
    centred = np.load(prepared_face5 / "face" / "landmarks.npy")[..., :2] * 524 / 512 + [left, top]
    error = np.linalg.norm(wide - centred, axis=-1)
    assert np.median(error) < 3.0 and np.percentile(error, 95) < 8.0, (np.median(error), np.percentile(error, 95))
    # the centred square of the same frame cuts the face: the crop is what found it
    assert crop["x"] > (1200 - 720) // 2 + 60


def read_like_a_trainer(root, i):
    """Load one frame the way GaussianTalker-style readers do: images from ori_imgs, head mask from parsing
    (B=255, G=0, R=0 in cv2 order), background = torso_imgs alpha-composited over bc.jpg."""
    import cv2

    image = cv2.imread(str(root / "ori_imgs" / f"{i}.jpg"))
    parsing = cv2.imread(str(root / "parsing" / f"{i}.png"))
    head = (parsing[..., 0] == 255) & (parsing[..., 1] == 0) & (parsing[..., 2] == 0)
    torso = cv2.imread(str(root / "torso_imgs" / f"{i}.png"), cv2.IMREAD_UNCHANGED)
    bc = cv2.imread(str(root / "bc.jpg"))
    alpha = torso[..., 3:] / 255.0
    background = torso[..., :3] * alpha + bc * (1 - alpha)
    return image, head, background, parsing


def test_composites_reconstruct_the_frame(prepared_face5):
    import cv2

    for i in (0, 50, 121):
        image, head, background, _ = read_like_a_trainer(prepared_face5, i)
        recon = np.where(head[..., None], image, background)
        gt = cv2.imread(str(prepared_face5 / "gt_imgs" / f"{i}.jpg")).astype(np.float64)
        mse = ((recon - gt) ** 2).mean()
        assert 10 * np.log10(255 ** 2 / mse) > 32, "head over (torso over bc) is the frame, up to JPEG"
        assert head.mean() > 0.1


def test_parsing_covers_the_face(prepared_face5):
    import cv2
    from being_face_mediapipe.parsing import face_oval_loop

    lm = np.load(prepared_face5 / "face" / "landmarks.npy")
    oval = face_oval_loop()
    for i in (0, 60, 121):
        _, head, _, parsing = read_like_a_trainer(prepared_face5, i)
        face = np.zeros(head.shape, np.uint8)
        cv2.fillPoly(face, [np.round(lm[i, oval, :2]).astype(np.int32)], 1)
        assert head[face.astype(bool)].mean() > 0.99
        colours = {tuple(c) for c in np.unique(parsing.reshape(-1, 3), axis=0)}
        assert colours <= {(255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255)}
        assert (0, 255, 0) in colours and (0, 0, 255) in colours, "neck and torso are visible in this clip"
    bc = cv2.imread(str(prepared_face5 / "bc.jpg"))
    assert bc.shape == (512, 512, 3)
    assert len(list(prepared_face5.glob("gt_imgs/*.jpg"))) == len(list(prepared_face5.glob("torso_imgs/*.png"))) == 122


def test_talkinggaussian_parsing_variant(prepared_copy, being_run_stage):
    import cv2

    being_run_stage(prepared_copy, "face_tracker", "mediapipe", {**FAST_FACE, "parsing_variant": "talkinggaussian"})
    colours = set()
    for i in range(0, 122, 6):
        parsing = cv2.imread(str(prepared_copy / "parsing" / f"{i}.png"))
        colours |= {tuple(c) for c in np.unique(parsing.reshape(-1, 3), axis=0)}
    assert {(100, 100, 100), (0, 0, 0), (255, 0, 0)} <= colours


def _reference_rotation(euler: torch.Tensor) -> torch.Tensor:
    """The reference tracker's (and GaussianTalker's reader's) euler2rot, written as that code builds it: each
    matrix from three column vectors, then rot_x @ rot_y @ rot_z."""
    a, b, c = (euler[:, k].reshape(-1, 1) for k in range(3))
    one, zero = torch.ones_like(a), torch.zeros_like(a)

    def columns(*cols):
        return torch.stack([torch.cat(col, 1) for col in cols], 2)

    rot_x = columns((one, zero, zero), (zero, a.cos(), a.sin()), (zero, -a.sin(), a.cos()))
    rot_y = columns((b.cos(), zero, -b.sin()), (zero, one, zero), (b.sin(), zero, b.cos()))
    rot_z = columns((c.cos(), -c.sin(), zero), (c.sin(), c.cos(), zero), (zero, zero, one))
    return rot_x @ rot_y @ rot_z


def test_gaussiantalkers_reader_poses_the_vertices_where_the_json_cameras_do(prepared_face5):
    """GaussianTalker's reader builds each camera from track_params.pt (R from the Euler angles, flipped and
    transposed into its world-to-view matrix; T the negated translation with x flipped back); ER-NeRF and
    TalkingGaussian read transforms_*.json. Both must put the tracked vertices on the same pixels."""
    params = torch.load(prepared_face5 / "track_params.pt")
    assert params["euler_convention"] == "reference"
    train = json.loads((prepared_face5 / "transforms_train.json").read_text())
    f, cx, cy = train["focal_len"], train["cx"], train["cy"]
    turned = int(params["euler"][:, 1].abs().argmax())  # the frame turned furthest, and a few more
    for i in sorted({0, 40, 80, turned}):
        verts = params["vertices"][i].double().numpy()
        # GaussianTalker: R = flip @ euler2rot, R = -R^T, T = -trans with T[0] negated; world-to-view
        # [R^T | T] (getWorld2View2), an OpenCV camera (x right, y down, looking down +z)
        rot = torch.diag(torch.tensor([-1.0, 1.0, 1.0])) @ _reference_rotation(params["euler"][i:i + 1].float())[0]
        r_gt = -rot.double().numpy().T
        t_gt = -params["trans"][i].double().numpy()
        t_gt[0] = -t_gt[0]
        cam = verts @ r_gt + t_gt  # rows: (R^T applied) = verts @ R
        uv_gt = np.stack([f * cam[:, 0] / cam[:, 2] + cx, f * cam[:, 1] / cam[:, 2] + cy], 1)
        # ER-NeRF: the inverse of the JSON's camera-to-world (OpenGL, metres)
        frame = next(fr for fr in train["frames"] if fr["img_id"] == i) if i < 110 else None
        if frame is None:
            continue
        w2c = np.linalg.inv(np.array(frame["transform_matrix"]))
        gl = (w2c[:3, :3] @ (verts.T / 10) + w2c[:3, 3:]).T
        uv_json = np.stack([cx - f * gl[:, 0] / gl[:, 2], cy + f * gl[:, 1] / gl[:, 2]], 1)
        assert np.abs(uv_gt - uv_json).max() < 0.05, f"frame {i}: {np.abs(uv_gt - uv_json).max():.2f} px apart"
    assert float(params["euler"][turned].abs().max()) > 0.02, "the clip turns its head, so a wrong convention shows"


def test_an_opening_jaw_is_expression_not_a_head_coming_closer(prepared_face5):
    """A clip made from the tracked head model in which only the jaw moves, the head still: aligned on the upper
    face (the default), the fitted head stays where it is and the jaw is expression; aligned on every point (the
    0.2.0 tracker), the head appears to come closer each time the mouth opens."""
    from being_face_mediapipe.fit import fit_head

    mean = np.load(prepared_face5 / "face" / "head_model.npz")["mean"].astype(np.float64)  # [V, 3] dm, y up
    corners = mean[[61, 291], 1].mean()
    below = np.clip((corners - mean[:, 1]) / (corners - mean[152, 1]), 0, None)  # 0 at the mouth corners, 1 at the chin
    n, focal, depth = 120, 1024.0, 12.0
    jaw = 0.12 * (1 - np.cos(np.linspace(0, 12 * np.pi, n))) / 2 + 0.02 * np.random.default_rng(0).random(n)  # dm
    shapes = np.repeat(mean[None], n, 0)
    shapes[:, :, 1] -= jaw[:, None] * below[None]  # the chin drops, the upper face stays
    z = shapes[..., 2] - depth  # the head 12 dm in front of an OpenGL camera, facing it
    landmarks = np.stack([256 - focal * shapes[..., 0] / z, 256 + focal * shapes[..., 1] / z,
                          -(z - z.mean()) * focal / depth], -1)
    still = fit_head(landmarks, 512, 512, iterations=60, focal_factors=(2.0,))
    moved = fit_head(landmarks, 512, 512, iterations=60, focal_factors=(2.0,), rigid=None)
    distance, before = -still.trans[:, 2], -moved.trans[:, 2]
    assert np.ptp(distance) / distance.mean() < 0.002 and np.degrees(np.ptp(still.euler, 0)).max() < 0.2
    assert abs(np.corrcoef(before, jaw)[0, 1]) > 0.8 and np.ptp(before) / before.mean() > 0.01
    chin = (still.mean[None] + np.einsum("nk,kvc->nvc", still.exp, still.basis))[:, 152, 1]
    assert np.corrcoef(chin, -jaw)[0, 1] > 0.99  # the expression carries the jaw
    assert still.errors.mean() < 0.2
