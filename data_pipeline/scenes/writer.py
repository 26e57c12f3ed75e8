"""Render one procedural scene and write it in the official VLM-3R metadata layout.

Files, relative to the output root (``video_path`` etc. are stored relative to it):

- ``<dataset>/<scene>.mp4``            the video (exactly the sampled frames, ``fps`` config);
                                        also the VSI-Bench layout ``<root>/<dataset>/<scene>.mp4``
- ``color/<split>/<scene>/<frame_id:06d>.jpg``  per-frame colour (optional)
- ``depth/<split>/<scene>/<frame_id:06d>.npz``  ``depth`` float16 [H, W] z-depth in metres
                                        (0.05 % relative precision) and ``instance`` uint16 [H, W]
                                        (= instance_id + 1, 0 = room); deflate level 1 (fast)

The scene / frame metadata dicts follow ``vlm_3r_data_process`` (see docs/data_engine.md);
the frame metadata carries one extra key, ``fps``, because the appearance-order task turns
``frame_id`` into seconds and our dataset name is not in the official fps table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from data_pipeline.scenes.camera import walkthrough
from data_pipeline.scenes.render import Intrinsics, Renderer, bboxes_2d
from data_pipeline.scenes.room import Room, generate_room


@dataclass
class SceneSpec:
    """What to render for one scene (all plain values so it pickles to worker processes)."""

    index: int
    seed: int
    split: str = "train"
    dataset: str = "synthetic"
    num_frames: int = 32
    fps: float = 1.0
    width: int = 256
    height: int = 256
    hfov_deg: float = 70.0
    min_visible_frac: float = 0.002
    write_color_frames: bool = True
    write_depth: bool = True
    codec: str = "auto"

    @property
    def name(self) -> str:
        return f"synth{self.index:05d}"


def pick_codec(preference: str = "auto") -> str:
    """libx264 when the installed PyAV wheel has it, otherwise mpeg4 (always built in)."""
    import av

    names = ["libx264", "mpeg4"] if preference == "auto" else [preference]
    for n in names:
        try:
            av.codec.Codec(n, "w")
            return n
        except Exception:  # noqa: BLE001 - PyAV raises various errors for unknown codecs
            continue
    raise RuntimeError(f"none of the video codecs {names} is available in this PyAV build; install a PyAV wheel with libx264")


def write_mp4(path: str, frames: np.ndarray, fps: float, codec: str = "auto") -> None:
    """frames uint8 [T, H, W, 3] -> H.264 (or MPEG-4 part 2) yuv420p mp4 at ``fps``."""
    import av

    codec = pick_codec(codec)
    T, H, W, _ = frames.shape
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with av.open(path, mode="w") as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = W + (W % 2), H + (H % 2)  # yuv420p needs even sizes
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "ultrafast"}
        else:
            stream.bit_rate = 4_000_000
        for f in frames:
            if f.shape[0] != stream.height or f.shape[1] != stream.width:
                f = np.pad(f, ((0, stream.height - H), (0, stream.width - W), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def save_npz(path: str, **arrays: np.ndarray) -> None:
    """Like ``np.savez_compressed`` (``np.load`` reads it) but at deflate level 1: 3x faster,
    the arrays compress nearly as well (flat surfaces, few instance ids)."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, a in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(a))
            zf.writestr(name + ".npy", buf.getvalue())


def render_scene(spec: SceneSpec, room_kwargs: dict | None = None):
    """-> (room, intrinsics, poses [T, 4, 4], rgb [T, H, W, 3], depth [T, H, W], inst [T, H, W])."""
    rng = np.random.default_rng([spec.seed, spec.index])
    room = generate_room(rng, **(room_kwargs or {}))
    poses = walkthrough(room, rng, spec.num_frames, spec.fps)
    intr = Intrinsics.from_fov(spec.width, spec.height, spec.hfov_deg)
    r = Renderer(room, intr)
    outs = [r.render(p) for p in poses]
    rgb = np.stack([o[0] for o in outs])
    depth = np.stack([o[1] for o in outs])
    inst = np.stack([o[2] for o in outs])
    return room, intr, poses, rgb, depth, inst


def scene_metadata(room: Room, video_path: str, dataset: str) -> dict:
    counts: dict[str, int] = {}
    boxes: dict[str, list] = {}
    for obj in room.objects:
        counts[obj.category] = counts.get(obj.category, 0) + 1
        boxes.setdefault(obj.category, []).append(obj.to_meta())
    return {
        "video_path": video_path,
        "dataset": dataset,
        "room_size": float(room.area),
        "room_center": [float(v) for v in room.center],
        "object_counts": counts,
        "object_bboxes": boxes,
    }


def frame_metadata(spec: SceneSpec, intr: Intrinsics, poses: np.ndarray, inst: np.ndarray) -> dict:
    min_px = max(4, int(round(spec.min_visible_frac * spec.width * spec.height)))
    frames = []
    for k in range(len(poses)):
        fid = f"{k:06d}"
        frames.append({
            "frame_id": k,
            "file_path_color": f"color/{spec.split}/{spec.name}/{fid}.jpg",
            "file_path_depth": f"depth/{spec.split}/{spec.name}/{fid}.npz",
            "camera_pose_camera_to_world": [[float(v) for v in row] for row in poses[k]],
            "bboxes_2d": bboxes_2d(inst[k], min_px),
        })
    return {
        "camera_intrinsics": intr.to_meta(),
        "img_width": spec.width,
        "img_height": spec.height,
        "fps": spec.fps,
        "frames": frames,
    }


def write_scene_files(out_dir: str, spec: SceneSpec, video_rel: str, rgb: np.ndarray, depth: np.ndarray,
                      inst: np.ndarray, fmeta: dict) -> None:
    """mp4 + optional per-frame jpg and depth/instance npz, at the paths named in ``fmeta``."""
    write_mp4(os.path.join(out_dir, video_rel), rgb, spec.fps, spec.codec)
    if spec.write_color_frames or spec.write_depth:
        from PIL import Image

        for k, fr in enumerate(fmeta["frames"]):
            if spec.write_color_frames:
                p = os.path.join(out_dir, fr["file_path_color"])
                os.makedirs(os.path.dirname(p), exist_ok=True)
                Image.fromarray(rgb[k]).save(p, quality=92)
            if spec.write_depth:
                p = os.path.join(out_dir, fr["file_path_depth"])
                os.makedirs(os.path.dirname(p), exist_ok=True)
                save_npz(p, depth=depth[k].astype(np.float16), instance=inst[k])


def generate_scene(spec: SceneSpec, out_dir: str | None, room_kwargs: dict | None = None) -> dict:
    """Render + write one scene. Returns ``{"scene_name", "scene_meta", "frame_meta", "room",
    "preview"}`` where preview is a few uint8 frames for the contact sheet. With
    ``out_dir=None`` nothing is written (tests)."""
    room, intr, poses, rgb, depth, inst = render_scene(spec, room_kwargs)
    video_rel = f"{spec.dataset}/{spec.name}.mp4"
    smeta = scene_metadata(room, video_rel, spec.dataset)
    fmeta = frame_metadata(spec, intr, poses, inst)
    if out_dir is not None:
        write_scene_files(out_dir, spec, video_rel, rgb, depth, inst, fmeta)
    pick = np.linspace(0, len(rgb) - 1, 4).astype(int)
    return {"scene_name": spec.name, "scene_meta": smeta, "frame_meta": fmeta, "room": room,
            "poses": poses, "preview": rgb[pick]}
