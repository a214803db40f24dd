"""Project-generated stand-in datasets, written in the real on-disk formats.

Why: the benchmark must run end-to-end (CI, a laptop, a GPU box without ImageNet/NYU) and
the *real* loaders must be what runs. So these generators write exactly what
:mod:`tosa_bench.data.imagenet` and :mod:`tosa_bench.data.nyu` read:

* ``shapes``: ImageFolder ``OUT/val/<wnid>/<name>.JPEG`` where the class is a small
  object (about 2x2 patches of 16 px at 224) at a random place on a cluttered background
  whose stripes and blobs carry no class information, so a token-reduction method that
  drops the object's tokens loses accuracy.
* ``rooms``: ray-cast box rooms (floor, ceiling, walls, boxes, spheres) with exact
  per-pixel z-depth in metres, written as a MATLAB v7.3-style ``nyu_depth_v2_labeled.mat``
  (HDF5, 512-byte MATLAB header, axes reversed) plus a classic ``splits.mat`` with 1-based
  indices, optionally also as BTS-style PNG pairs.

Everything is deterministic from ``seed`` (one numpy Generator per image, keyed by
``(seed, index)``) and uses numpy, PIL, h5py and scipy only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tosa_bench.errors import DatasetError, OptionError, OutputPathError

__all__ = [
    "SHAPES",
    "COLOURS",
    "NYU_FOCAL_RATIO",
    "make_shapes",
    "object_mask",
    "make_rooms",
    "make_dataset",
    "render_room",
    "write_v73_mat",
]

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "x", "frame")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (30, 190, 60),
    "blue": (40, 70, 235),
    "yellow": (240, 215, 30),
    "magenta": (215, 40, 205),
    "cyan": (30, 205, 215),
}
#: NYU's Kinect focal length over image width (518.86 px / 640 px); used for the rooms camera.
NYU_FOCAL_RATIO = 518.8579 / 640.0

_MAT_NAME = "nyu_depth_v2_labeled.mat"
_SPLITS_NAME = "splits.mat"
_BTS_LIST = "nyudepthv2_test_files_with_gt.txt"


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


# ----------------------------------------------------------------------------- shapes


def _shape_mask(kind: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of a shape of radius ``r`` px, given pixel offsets from its centre."""
    ax, ay, d = np.abs(dx), np.abs(dy), np.hypot(dx, dy)
    bar = r / 3.0
    if kind == "circle":
        return d <= r
    if kind == "square":
        return np.maximum(ax, ay) <= 0.8 * r
    if kind == "triangle":  # apex up, base at +0.8 r
        return (dy <= 0.8 * r) & (ax <= (dy + r) / 1.8 * 0.95)
    if kind == "cross":
        return ((ax <= bar) & (ay <= r)) | ((ay <= bar) & (ax <= r))
    if kind == "ring":
        return (d <= r) & (d >= 0.55 * r)
    if kind == "diamond":
        return ax + ay <= r
    if kind == "x":
        diag = bar * np.sqrt(2.0) / 2.0 * 1.4
        return ((np.abs(dx - dy) <= diag) | (np.abs(dx + dy) <= diag)) & (np.maximum(ax, ay) <= 0.8 * r)
    if kind == "frame":
        m = np.maximum(ax, ay)
        return (m <= 0.85 * r) & (m >= 0.5 * r)
    raise ValueError(f"unknown shape {kind!r}")


def _class_spec(k: int, num_classes: int) -> tuple[str, str | None]:
    """(shape, colour) of class k. Up to 8 classes only the shape decides (colour is
    random per image); beyond that, each (shape, colour) pair is a class."""
    shape = SHAPES[k % len(SHAPES)]
    if num_classes <= len(SHAPES):
        return shape, None
    return shape, list(COLOURS)[k // len(SHAPES)]


def _clutter(rng: np.random.Generator, size: int) -> np.ndarray:
    """Class-free background, float32 (size, size, 3) in 0..1: smooth colour noise,
    oriented stripes, soft distractor blobs and pixel noise."""
    g = int(rng.integers(3, 8))
    coarse = (rng.uniform(0.25, 0.75, (g, g, 3)) * 255).astype(np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float32) / 255.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta, period = rng.uniform(0, np.pi), rng.uniform(0.04, 0.2) * size
    stripes = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.uniform(0, 6.3))
    img += rng.uniform(0.05, 0.15) * stripes[..., None] * rng.uniform(0.5, 1.0, 3)
    for _ in range(int(rng.integers(3, 7))):
        cx, cy = rng.uniform(0, size, 2)
        sx, sy = rng.uniform(0.03, 0.12, 2) * size
        a = rng.uniform(0.4, 0.8) * np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))
        img = img * (1 - a[..., None]) + a[..., None] * rng.uniform(0.1, 0.9, 3)
    img += rng.normal(0, 0.03, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


#: default object radius, as a share of the image side (the ``shapes`` set of ``data make``)
RADIUS = (0.06, 0.09)


def _draw_shapes_image(rng: np.random.Generator, size: int, k: int, num_classes: int,
                       radius: tuple[float, float] = RADIUS, inner: float = 1.0) -> tuple[np.ndarray, dict[str, Any]]:
    shape, colour = _class_spec(k, num_classes)
    colour = colour or list(COLOURS)[int(rng.integers(len(COLOURS)))]
    img = _clutter(rng, size)
    r = float(rng.uniform(*radius) * size)
    lo = size * (1.0 - inner) / 2.0  # the object lies inside the central inner x inner square
    cx, cy = (float(v) for v in rng.uniform(lo + r + 2, size - lo - r - 2, 2))
    mask = _shape_mask(shape, *_offsets(size, cx, cy), r)
    rgb = np.array(COLOURS[colour], np.float32) / 255.0 * rng.uniform(0.85, 1.0)
    img[mask] = rgb
    ann = {"shape": shape, "colour": colour, "cx": cx, "cy": cy, "radius": r}
    return (img * 255 + 0.5).astype(np.uint8), ann


def _offsets(size: int, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre offsets (dx, dy) of a size x size image from the point (cx, cy)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return xx - cx, yy - cy


def object_mask(annotation: dict[str, Any], size: int) -> np.ndarray:
    """Boolean (size, size) mask of the object of one ``shapes`` image, drawn again from
    its annotation (shape, centre and radius in px of the ``size`` x ``size`` image) with
    the same rule that painted it, so it matches the painted pixels exactly."""
    cx, cy = float(annotation["cx"]), float(annotation["cy"])
    return _shape_mask(annotation["shape"], *_offsets(size, cx, cy), float(annotation["radius"]))


def make_shapes(
    out_dir: str | os.PathLike[str],
    n: int = 200,
    size: int = 224,
    num_classes: int = 10,
    seed: int = 0,
    radius: tuple[float, float] = RADIUS,
    inner: float = 1.0,
) -> Path:
    """Write a small-object classification set in ImageFolder layout; return ``out_dir``.

    ``n`` images (class of image i = i mod num_classes, so classes are balanced), ``size``
    x ``size`` px JPEG (quality 95), class folders ``n00000000``.. (sorted = class order).
    The object's radius is a share of ``size`` drawn from ``radius`` (default 6-9 %); the
    whole object lies inside the central ``inner`` x ``inner`` share of the image (1: anywhere;
    0.875: inside the DeiT evaluation crop, so no crop cuts it). Also writes ``README.txt``
    and ``annotations.json`` (per image: class, shape, colour, centre and radius in px,
    exact to float precision so :func:`object_mask` redraws the painted pixels).
    """
    if not (0 < radius[0] <= radius[1] < 0.5 and 0 < inner <= 1 and 2 * radius[1] * size + 4 < inner * size):
        raise OptionError(f"shapes: radius {radius} (share of the side) does not fit inside the central {inner} of a {size}-px image")
    if not 1 <= num_classes <= len(SHAPES) * len(COLOURS):
        raise OptionError(f"num_classes must be in 1..{len(SHAPES) * len(COLOURS)}, got {num_classes}")
    if size < 32 or n < 1:
        raise OptionError(f"shapes: need size >= 32 and n >= 1, got size={size}, n={n}")
    out = Path(out_dir)
    wnids = [f"n{k:08d}" for k in range(num_classes)]
    for w in wnids:
        (out / "val" / w).mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        k = i % num_classes
        img, ann = _draw_shapes_image(_rng(seed, i), size, k, num_classes, radius, inner)
        rel = f"val/{wnids[k]}/shape_{i:06d}.JPEG"
        Image.fromarray(img).save(out / rel, quality=95)
        records.append({"file": rel, "label": k, **ann})
    classes = [dict(zip(("wnid", "shape", "colour"), (w, *_class_spec(k, num_classes)))) for k, w in enumerate(wnids)]
    meta = {"kind": "shapes", "n": n, "size": size, "num_classes": num_classes, "seed": seed,
            "radius_share": list(radius), "inner": inner, "classes": classes, "images": records}
    (out / "annotations.json").write_text(json.dumps(meta, indent=1))
    (out / "README.txt").write_text(
        "tosa-bench synthetic 'shapes' classification set (generated, not downloaded).\n"
        f"{n} images, {size}x{size} px JPEG, {num_classes} classes, seed {seed}.\n"
        "Layout: val/<wnid>/<name>.JPEG (ImageFolder; class index = sorted wnid order).\n"
        f"The class is decided only by one small object (radius {radius[0]:.0%}-{radius[1]:.0%} of the side;\n"
        f"shapes {', '.join(SHAPES[:num_classes])}; colour also decides the class when there\n"
        "are more than 8 classes) placed at a random position on a cluttered background\n"
        "(smooth colour noise, stripes, soft blobs, pixel noise) that carries no class.\n"
        "annotations.json lists each image's class, shape, colour, centre and radius (px).\n"
        "Regenerate: tosa-bench data make shapes --out DIR [--n N] [--size S]\n"
    )
    return out


# ------------------------------------------------------------------------------ rooms


def _rot(yaw: float, pitch: float) -> np.ndarray:
    """Camera-to-world rotation (x right, y down, z forward); yaw about y, pitch about x."""
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    return ry @ rx


def render_room(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Ray-cast one random room; return (image uint8 (H, W, 3), depth float32 (H, W) metres, params).

    Depth is the camera z-depth (distance along the optical axis), as in NYU. The camera
    (pinhole, focal ``NYU_FOCAL_RATIO * width`` px, principal point at the centre, small
    random yaw/pitch) sits inside a box room; the geometry ranges keep every depth within
    about 1 to 8.5 m. Shading: a ceiling lamp and a camera-mounted light, both with
    inverse-square-like falloff, plus floor tiles and wall stripes fixed in world metres,
    so image brightness and texture frequency both vary with depth.

    Vectors are stored channel-first, (3, H, W) float32, so dot products are three
    elementwise products (much faster in numpy than reducing a trailing axis of size 3).
    """
    f = NYU_FOCAL_RATIO * width
    u = ((np.arange(width) + 0.5 - width / 2) / f).astype(np.float32)
    v = ((np.arange(height) + 0.5 - height / 2) / f).astype(np.float32)
    d_cam = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.ones((1, 1), np.float32)))
    yaw, pitch = np.deg2rad(rng.uniform(-12, 12)), np.deg2rad(rng.uniform(-8, 8))
    # World ray directions. d_cam has camera z = 1, so the ray parameter t is the z-depth.
    d = np.einsum("ij,jhw->ihw", _rot(yaw, pitch).astype(np.float32), d_cam)

    cam_h, room_h = rng.uniform(1.2, 1.6), rng.uniform(2.5, 3.0)
    x_l, x_r, z_b = -rng.uniform(1.5, 3.0), rng.uniform(1.5, 3.0), rng.uniform(4.0, 7.5)
    y_floor, y_ceil = cam_h, cam_h - room_h  # y points down
    depth = np.full((height, width), np.inf, np.float32)
    normal = np.zeros((3, height, width), np.float32)
    surf = np.full((height, width), -1, np.int32)  # 0 floor, 1 ceiling, 2-4 walls, 10+ objects
    colours: dict[int, np.ndarray] = {}

    def take(t: np.ndarray, n: np.ndarray, sid: int) -> None:
        """z-buffer: keep surface ``sid`` where it is hit (t > 0) nearer than so far."""
        nearer = (t > 1e-6) & (t < depth)
        depth[nearer] = t[nearer]
        normal[:, nearer] = n[:, nearer] if n.ndim == 3 else n[:, None]
        surf[nearer] = sid

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        planes = [  # axis, coordinate, inward normal, surface id
            (1, y_floor, (0, -1, 0), 0), (1, y_ceil, (0, 1, 0), 1),
            (0, x_l, (1, 0, 0), 2), (0, x_r, (-1, 0, 0), 3),
            (2, z_b, (0, 0, -1), 4), (2, -1.5, (0, 0, 1), 4),
        ]
        for axis, c, n, sid in planes:
            t = np.float32(c) / d[axis]
            take(np.where(t > 0, t, np.inf), np.array(n, np.float32), sid)

        safe = np.where(np.abs(d) < 1e-12, np.float32(1e-12), d)
        sid = 10
        for _ in range(int(rng.integers(2, 5))):  # axis-aligned boxes standing on the floor
            w, dd, h = rng.uniform(0.4, 1.2), rng.uniform(0.4, 1.2), rng.uniform(0.3, 1.3)
            xc = rng.uniform(x_l + w / 2 + 0.05, x_r - w / 2 - 0.05)
            zc = rng.uniform(2.0, z_b - dd / 2 - 0.1)
            lo = np.array([xc - w / 2, y_floor - h, zc - dd / 2], np.float32)[:, None, None]
            hi = np.array([xc + w / 2, y_floor, zc + dd / 2], np.float32)[:, None, None]
            t1, t2 = lo / safe, hi / safe  # slab method
            tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
            t_near = np.maximum(np.maximum(tmin[0], tmin[1]), tmin[2])
            t_far = np.minimum(np.minimum(tmax[0], tmax[1]), tmax[2])
            n = np.where(tmin == t_near, -np.sign(d), 0).astype(np.float32)  # entry face
            take(np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf), n, sid)
            colours[sid] = rng.uniform(0.15, 0.9, 3).astype(np.float32)
            sid += 1
        for _ in range(int(rng.integers(1, 4))):  # spheres resting on the floor
            r = rng.uniform(0.2, 0.5)
            c = np.array([rng.uniform(x_l + r + 0.05, x_r - r - 0.05), y_floor - r,
                          rng.uniform(2.0, z_b - r - 0.1)], np.float32)[:, None, None]
            a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
            b = d[0] * c[0] + d[1] * c[1] + d[2] * c[2]
            disc = b * b - a * np.float32((c * c).sum() - r * r)
            t = (b - np.sqrt(np.maximum(disc, 0))) / a
            t = np.where((disc >= 0) & (t > 0), t, np.inf).astype(np.float32)
            take(t, (t * d - c) / np.float32(r), sid)
            colours[sid] = rng.uniform(0.15, 0.9, 3).astype(np.float32)
            sid += 1

    p = depth * d  # world hit points (3, H, W)
    albedo = np.zeros((3, height, width), np.float32)
    floor_c, wall_c = rng.uniform(0.35, 0.7, 3), rng.uniform(0.55, 0.9, 3)
    tile = rng.uniform(0.4, 0.7)
    checker = (np.floor(p[0] / tile) + np.floor(p[2] / tile)) % 2
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (p[0] + p[2]) / 0.3)
    m = surf == 0
    albedo[:, m] = floor_c[:, None] * (0.7 + 0.3 * checker[m])
    albedo[:, surf == 1] = 0.9
    m = (surf >= 2) & (surf <= 4)
    albedo[:, m] = wall_c[:, None] * (0.85 + 0.15 * stripes[m])
    for s, col in colours.items():
        albedo[:, surf == s] = col[:, None]

    lamp = np.array([rng.uniform(x_l + 0.5, x_r - 0.5), y_ceil + 0.15, rng.uniform(1.0, z_b - 1.0)],
                    np.float32)[:, None, None]
    to_lamp = lamp - p
    dist2 = (to_lamp * to_lamp).sum(0)
    lamp_term = np.clip((normal * to_lamp).sum(0) / np.sqrt(dist2), 0, None) * 3.0 / (1.0 + dist2)
    d_len = np.sqrt((d * d).sum(0))
    head_term = np.clip(-(normal * d).sum(0) / d_len, 0, None) * 6.0 / (1.0 + (d_len * depth) ** 2)
    # Distance attenuation (haze-like) makes nearer surfaces brighter on average: a monocular
    # depth cue a model can use, so a depth head's accuracy reflects which tokens it keeps.
    light = (0.1 + 0.6 * lamp_term + head_term) * np.exp(-0.3 * (d_len * depth - 1.0))
    img = np.clip(albedo * light, 0, 1) ** np.float32(1 / 2.2)
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    img8 = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    params = {"yaw_deg": float(np.rad2deg(yaw)), "pitch_deg": float(np.rad2deg(pitch)),
              "camera_height_m": float(cam_h), "room_height_m": float(room_h),
              "walls_x_m": [float(x_l), float(x_r)], "back_wall_z_m": float(z_b), "objects": sid - 10}
    return np.ascontiguousarray(img8), depth, params


def write_v73_mat(path: str | os.PathLike[str], images_hwc: np.ndarray, depths_hw: np.ndarray) -> None:
    """Write ``images`` (N, H, W, 3) uint8 and ``depths`` (N, H, W) metres the way MATLAB
    v7.3 stores them: HDF5 after a 512-byte MATLAB header, axes reversed, i.e. h5 shapes
    (N, 3, W, H) uint8 and (N, W, H) float32 (as the official NYU file)."""
    import h5py

    images = np.ascontiguousarray(images_hwc.transpose(0, 3, 2, 1))  # N,H,W,C -> N,C,W,H
    depths = np.ascontiguousarray(depths_hw.transpose(0, 2, 1).astype(np.float32))  # N,W,H
    path = Path(path)
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("images", data=images).attrs["MATLAB_class"] = np.bytes_("uint8")
        f.create_dataset("depths", data=depths).attrs["MATLAB_class"] = np.bytes_("single")
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 1970 HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"  # version 0x0200, little-endian
    with open(path, "r+b") as fh:
        fh.write(header)


def make_rooms(
    out_dir: str | os.PathLike[str],
    n: int = 16,
    height: int = 480,
    width: int = 640,
    seed: int = 0,
    n_test: int | None = None,
    write_png: bool = False,
) -> Path:
    """Write synthetic rooms as ``nyu_depth_v2_labeled.mat`` + ``splits.mat``; return ``out_dir``.

    ``n`` scenes of ``height`` x ``width`` px (NYU: 480 x 640). ``n_test`` test scenes
    (default: NYU's 654/1449 proportion, at least 1) chosen at random, the rest train;
    ``splits.mat`` stores them 1-based as double column vectors, like the official file.
    ``write_png``: also write the test scenes as a BTS-style folder ``OUT/bts`` (RGB PNG,
    16-bit depth PNG in millimetres, list ``nyudepthv2_test_files_with_gt.txt``).
    """
    import scipy.io

    if n < 1 or height < 16 or width < height:
        raise OptionError(f"rooms: need n >= 1 and width >= height >= 16, got n={n}, {height}x{width}")
    n_test = max(1, round(n * 654 / 1449)) if n_test is None else n_test
    if not 0 < n_test <= n:
        raise OptionError(f"rooms: n_test must be in 1..{n}, got {n_test}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = np.empty((n, height, width, 3), np.uint8)
    depths = np.empty((n, height, width), np.float32)
    scenes = []
    for i in range(n):
        images[i], depths[i], params = render_room(_rng(seed, i), height, width)
        scenes.append(params)
    write_v73_mat(out / _MAT_NAME, images, depths)
    test = np.sort(np.random.default_rng([seed, 1 << 30]).permutation(n)[:n_test])
    train = np.setdiff1d(np.arange(n), test)
    scipy.io.savemat(
        out / _SPLITS_NAME,
        {"trainNdxs": (train + 1).astype(np.float64).reshape(-1, 1),
         "testNdxs": (test + 1).astype(np.float64).reshape(-1, 1)},
    )
    focal = NYU_FOCAL_RATIO * width
    if write_png:
        bts = out / "bts"
        (bts / "test").mkdir(parents=True, exist_ok=True)
        lines = []
        for i in test.tolist():
            rgb, dep = f"test/rgb_{i:05d}.png", f"test/sync_depth_{i:05d}.png"
            Image.fromarray(images[i]).save(bts / rgb)
            Image.fromarray(np.round(depths[i] * 1000.0).astype(np.uint16)).save(bts / dep)
            lines.append(f"{rgb} {dep} {focal:.4f}")
        (bts / _BTS_LIST).write_text("\n".join(lines) + "\n")
    meta = {"kind": "rooms", "n": n, "height": height, "width": width, "seed": seed,
            "focal_px": focal, "principal_point_px": [width / 2, height / 2],
            "test_indices_0based": test.tolist(),
            "depth_range_m": [float(depths.min()), float(depths.max())], "scenes": scenes}
    (out / "rooms.json").write_text(json.dumps(meta, indent=1))
    (out / "README.txt").write_text(
        "tosa-bench synthetic 'rooms' depth set (generated, not downloaded).\n"
        f"{n} ray-cast box rooms (floor, ceiling, walls, boxes, spheres), {height}x{width} px, seed {seed}.\n"
        "Depth: exact per-pixel camera z-depth in metres (pinhole camera, focal "
        f"{focal:.2f} px, principal point at the image centre).\n"
        f"{_MAT_NAME}: MATLAB v7.3 (HDF5 with 512-byte MATLAB header), axes reversed as the\n"
        f"official NYU file: images (N, 3, W, H) uint8, depths (N, W, H) float32 metres.\n"
        f"{_SPLITS_NAME}: trainNdxs / testNdxs, 1-based column vectors ({len(train)} / {len(test)}).\n"
        + ("bts/: test scenes as RGB PNG + 16-bit depth PNG (mm) with a BTS list file.\n" if write_png else "")
        + "rooms.json: camera and per-scene parameters.\n"
        "Regenerate: tosa-bench data make rooms --out DIR [--n N] [--size HEIGHT]\n"
    )
    return out


# --------------------------------------------------------------------------- dispatch


#: written into every generated set: the mark that ``--overwrite`` may replace the folder
MARKER = ".tosa-bench-data"


def make_dataset(
    kind: str,
    out_dir: str | os.PathLike[str],
    n: int | None = None,
    size: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Generate a synthetic set for the CLI (``tosa-bench data make shapes|rooms``).

    ``shapes``: ``size`` is the square image side (default 224), ``n`` default 200.
    ``rooms``: ``size`` is the image HEIGHT (default 480); width = 4/3 x height rounded to
    a multiple of 16 (480 -> 640, 96 -> 128); ``n`` default 16. Returns the folder to pass
    to the matching loader.

    Never a mix of old and new files: the set is written into a fresh folder beside
    ``out_dir`` and renamed into place when complete. An existing non-empty ``out_dir``
    is refused (OutputPathError) unless ``overwrite``, and even then only when it is a
    set this function made (it holds :data:`MARKER`), so a mistyped path never deletes
    someone's folder.
    """
    if kind not in ("shapes", "rooms"):
        raise DatasetError(f"unknown synthetic dataset {kind!r}; choose 'shapes' or 'rooms'")
    target = Path(out_dir)
    replace = _check_target(target, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as err:
        raise OutputPathError(f"--out {target}: cannot create the folder ({err.strerror or err})") from None
    try:
        made = _generate(kind, tmp, n, size, seed)
        (tmp / MARKER).write_text(f"{kind}\n")
        if replace:
            old = tmp.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except OSError as err:  # a full disk, permissions, a folder that appeared meanwhile
        where = f" ({err.filename})" if err.filename else ""
        raise OutputPathError(f"--out {target}: cannot write the {kind} dataset there: {err.strerror or err}{where}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target / made.relative_to(tmp)


def _check_target(target: Path, overwrite: bool) -> bool:
    """Whether ``target`` exists and will be replaced; OutputPathError when it may not be
    written at all (a file, a file on the way, not empty without ``overwrite``, not ours)."""
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"--out {target}: {parent} is a file, not a directory")
            break
    if not target.exists():
        return False
    if not target.is_dir():
        raise OutputPathError(f"--out {target}: is a file; give a folder path")
    try:
        entries = list(target.iterdir())
    except OSError as err:
        raise OutputPathError(f"--out {target}: cannot be read ({err.strerror or err})") from None
    if not entries:
        target.rmdir()  # an empty folder: nothing to lose, and the rename needs the name free
        return False
    if not overwrite:
        raise OutputPathError(f"--out {target}: not empty ({len(entries)} entries); give a new folder, or --overwrite to replace a set made by tosa-bench data make")
    if not (target / MARKER).exists():
        raise OutputPathError(f"--out {target}: not a set made by tosa-bench data make (no {MARKER} in it); --overwrite only replaces those, remove it yourself")
    return True


def _generate(kind: str, out: Path, n: int | None, size: int | None, seed: int) -> Path:
    if kind == "shapes":
        return make_shapes(out, n=200 if n is None else n, size=224 if size is None else size, seed=seed)
    h = 480 if size is None else size
    w = max(16, int(round(h * 4 / 3 / 16)) * 16)
    return make_rooms(out, n=16 if n is None else n, height=h, width=w, seed=seed)
