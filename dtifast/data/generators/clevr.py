"""CLEVR6 look-alike: 128×128 perspective scenes of 3–6 shaded objects on a floor.

A small vectorised ray caster (one primary ray per pixel centre, no anti-aliasing, no shadows) renders
spheres, cubes (rotated about the vertical axis) and capped cylinders standing on the floor plane
``z = 0``, seen by a fixed pinhole camera. Objects come in 2 sizes, 2 materials (rubber: diffuse with
a weak broad highlight; metal: darker diffuse with a strong sharp highlight) and CLEVR's 8 colours;
they never interpenetrate (footprints are kept apart) and each keeps at least :data:`MIN_VISIBLE`
visible pixels (scenes are resampled otherwise). Shading: ambient + a point key light + two
directional lights, Lambert diffuse + Blinn-Phong specular, gamma 2.2.

Ground truth: a pixel belongs to the object whose surface its ray hits first; the floor and the sky
above the horizon are background. Instance masks are thus exactly the visible pixels.

Classes (7): 0 = background, then shape × size: 1 small sphere, 2 large sphere, 3 small cube,
4 large cube, 5 small cylinder, 6 large cylinder (``1 + 2 * shape + size``).
"""
from __future__ import annotations

import numpy as np

from .base import Scenes, replace_rows

NAME = "clevr6"
IMG_SIZE = (128, 128)
N_OBJECTS = (3, 6)
SHAPE_NAMES = ("sphere", "cube", "cylinder")
SIZE_NAMES = ("small", "large")
SIZES = (0.35, 0.7)  # CLEVR's radii
MATERIAL_NAMES = ("rubber", "metal")
COLOR_NAMES = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
COLORS = np.array([[87, 87, 87], [173, 35, 35], [42, 75, 215], [29, 105, 20], [129, 74, 25], [129, 38, 192],
                   [41, 208, 208], [255, 238, 51]], np.uint8)
CLASS_NAMES = ("background",) + tuple(f"{z} {s}" for s in SHAPE_NAMES for z in SIZE_NAMES)
N_CLASSES = len(CLASS_NAMES)
CUBE_HALF = 0.8  # cube half-side / radius
AREA = 2.8  # object centres in [-AREA, AREA]²
MIN_GAP = 0.1  # between the bounding circles of two footprints
MIN_VISIBLE = 20

CAMERA = np.array([7.0, -7.0, 6.0])
LOOK_AT = np.array([0.0, 0.0, 0.0])
FOV_DEG = 40.0
FLOOR_ALBEDO = 0.4
SKY = 0.75  # linear gray above the horizon
AMBIENT = 0.25
KEY_LIGHT = (np.array([5.0, -3.0, 9.0]), 0.75)  # point light (position, intensity)
DIR_LIGHTS = ((np.array([-1.0, -0.5, 1.0]), 0.3), (np.array([0.2, 1.0, 0.8]), 0.2))
MATERIALS = {  # diffuse scale, specular strength, shininess
    "rubber": (1.0, 0.08, 8.0),
    "metal": (0.55, 0.9, 60.0),
}


def camera_rays(img_size: tuple[int, int] = IMG_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The fixed camera's origin ``(3,)`` and unit ray directions ``(H * W, 3)`` through pixel centres."""
    h, w = img_size
    fwd = LOOK_AT - CAMERA
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    t = np.tan(np.radians(FOV_DEG) / 2)
    ys = (1 - (np.arange(h) + 0.5) / (h / 2)) * t * h / max(h, w)
    xs = ((np.arange(w) + 0.5) / (w / 2) - 1) * t * w / max(h, w)
    d = fwd + xs[None, :, None] * right + ys[:, None, None] * up
    d = d.reshape(-1, 3)
    return CAMERA.astype(np.float32), (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)


def _hit_sphere(o, d, c, r):
    """Rays ``o + t d`` against spheres: t ``(M, P)`` (inf on a miss) and normals ``(M, P, 3)``."""
    oc = o[None] - c  # (M, 3)
    b = oc @ d.T  # (M, P)
    disc = b * b - ((oc * oc).sum(1) - r * r)[:, None]
    with np.errstate(invalid="ignore"):
        t = -b - np.sqrt(disc)
    t = np.where((disc >= 0) & (t > 1e-4), t, np.inf)
    p = o[None, None] + np.where(np.isfinite(t), t, 0)[..., None] * d[None]
    return t, (p - c[:, None]) / r[:, None, None]


def _hit_cube(o, d, c, half, angle):
    """Rays against boxes of half-side ``half`` rotated by ``angle`` about z."""
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]  # (M, 1)
    rel = o[None] - c  # (M, 3), box frame = rotate by -angle
    ox, oy, oz = cos * rel[:, :1] + sin * rel[:, 1:2], -sin * rel[:, :1] + cos * rel[:, 1:2], rel[:, 2:]
    dx, dy = cos * d[None, :, 0] + sin * d[None, :, 1], -sin * d[None, :, 0] + cos * d[None, :, 1]  # (M, P)
    dz = np.broadcast_to(d[None, :, 2], dx.shape)
    tnear, tfar = np.full(dx.shape, -np.inf, np.float32), np.full(dx.shape, np.inf, np.float32)
    sign = np.zeros(dx.shape + (3,), np.float32)
    h = half[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        for k, (ok, dk) in enumerate(((ox, dx), (oy, dy), (oz, dz))):
            inv = 1.0 / np.where(dk == 0, 1e-12, dk)
            t1, t2 = (-h - ok) * inv, (h - ok) * inv
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
            better = lo > tnear
            tnear = np.where(better, lo, tnear)
            sign = np.where(better[..., None], np.eye(3, dtype=np.float32)[k] * -np.sign(dk)[..., None], sign)
            tfar = np.minimum(tfar, hi)
    t = np.where((tnear <= tfar) & (tnear > 1e-4), tnear, np.inf)
    nx = cos[..., None] * sign[..., :1] - sin[..., None] * sign[..., 1:2]  # back to world: rotate by +angle
    ny = sin[..., None] * sign[..., :1] + cos[..., None] * sign[..., 1:2]
    return t, np.concatenate([nx, ny, sign[..., 2:]], -1)


def _hit_cylinder(o, d, c, r, half_h):
    """Rays against vertical capped cylinders (radius ``r``, height ``2 half_h``, centre ``c``)."""
    rel = o[None] - c  # (M, 3)
    a = d[:, 0] ** 2 + d[:, 1] ** 2  # (P,)
    b = rel[:, :1] * d[None, :, 0] + rel[:, 1:2] * d[None, :, 1]  # (M, P)
    cc = (rel[:, 0] ** 2 + rel[:, 1] ** 2 - r * r)[:, None]
    disc = b * b - a[None] * cc
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-b - np.sqrt(disc)) / a[None]
    z = rel[:, 2:3] + t_side * d[None, :, 2]
    t_side = np.where((disc >= 0) & (t_side > 1e-4) & (np.abs(z) <= half_h[:, None]), t_side, np.inf)
    with np.errstate(divide="ignore"):
        t_top = (half_h[:, None] - rel[:, 2:3]) / d[None, :, 2]
    px, py = rel[:, :1] + t_top * d[None, :, 0], rel[:, 1:2] + t_top * d[None, :, 1]
    t_top = np.where((t_top > 1e-4) & (px * px + py * py <= (r * r)[:, None]), t_top, np.inf)
    side = t_side < t_top
    t = np.minimum(t_side, t_top)
    p = rel[:, None] + np.where(np.isfinite(t), t, 0)[..., None] * d[None]  # relative to the centre
    n_side = np.concatenate([p[..., :2] / r[:, None, None], np.zeros_like(p[..., :1])], -1)
    n_top = np.broadcast_to(np.array([0, 0, 1], np.float32), n_side.shape)
    return t, np.where(side[..., None], n_side, n_top)


def _geometry(obj: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object centres ``(n, S, 3)`` (resting on the floor), radii and bounding radii ``(n, S)``."""
    r = np.asarray(SIZES, np.float32)[obj["size"]]
    z = np.where(obj["shape"] == 1, CUBE_HALF * r, r)
    centre = np.stack([obj["x"], obj["y"], z], -1).astype(np.float32)
    bound = np.where(obj["shape"] == 1, CUBE_HALF * np.sqrt(2) * r, r)
    return centre, r, bound


def trace(obj: dict[str, np.ndarray], img_size: tuple[int, int] = IMG_SIZE
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cast the camera's rays into scenes.

    Args:
        obj: per-object arrays ``(n, S)``: present (bool), shape, size, x, y, angle.

    Returns:
        ``(first, t, normal)``: index of the first object hit ``(n, P)`` (-1 = floor/sky), its distance
        ``(n, P)`` and the unit surface normal ``(n, P, 3)`` (floor: +z), with ``P = H * W``.
    """
    o, d = camera_rays(img_size)
    n, s = obj["shape"].shape
    centre, r, _ = _geometry(obj)
    t = np.full((n * s, d.shape[0]), np.inf, np.float32)
    normal = np.zeros((n * s, d.shape[0], 3), np.float32)
    shape, present = obj["shape"].reshape(-1), obj["present"].reshape(-1)
    centre, r, angle = centre.reshape(-1, 3), r.reshape(-1), obj["angle"].reshape(-1).astype(np.float32)
    for sid, fn in enumerate((lambda i: _hit_sphere(o, d, centre[i], r[i]),
                              lambda i: _hit_cube(o, d, centre[i], CUBE_HALF * r[i], angle[i]),
                              lambda i: _hit_cylinder(o, d, centre[i], r[i], r[i]))):
        idx = np.flatnonzero((shape == sid) & present)
        if idx.size:
            t[idx], normal[idx] = fn(idx)
    t, normal = t.reshape(n, s, -1), normal.reshape(n, s, -1, 3)
    first = t.argmin(1)  # (n, P)
    t_first = np.take_along_axis(t, first[:, None], 1)[:, 0]
    hit = np.isfinite(t_first)
    n_first = np.take_along_axis(normal, first[:, None, :, None], 1)[:, 0]
    floor_t = np.where(d[:, 2] < 0, -o[2] / np.where(d[:, 2] < 0, d[:, 2], -1), np.inf).astype(np.float32)
    t_out = np.where(hit, t_first, floor_t[None])
    n_out = np.where(hit[..., None], n_first, np.array([0, 0, 1], np.float32))
    return np.where(hit, first, -1), t_out, n_out


def shade(obj: dict[str, np.ndarray], first: np.ndarray, t: np.ndarray, normal: np.ndarray,
          img_size: tuple[int, int] = IMG_SIZE) -> np.ndarray:
    """RGB ``uint8 (n, H, W, 3)`` of traced scenes (see the module docstring for the lighting)."""
    o, d = camera_rays(img_size)
    n = first.shape[0]
    rows = np.arange(n)[:, None]
    on_obj = first >= 0
    k = np.maximum(first, 0)
    lin_colors = (COLORS.astype(np.float32) / 255) ** 2.2
    albedo = np.where(on_obj[..., None], lin_colors[obj["color"][rows, k]], FLOOR_ALBEDO).astype(np.float32)
    metal = on_obj & (obj["material"][rows, k] == 1)
    kd = np.where(metal, MATERIALS["metal"][0], MATERIALS["rubber"][0])[..., None]
    ks = np.where(on_obj, np.where(metal, MATERIALS["metal"][1], MATERIALS["rubber"][1]), 0.0)[..., None]
    shininess = np.where(metal, MATERIALS["metal"][2], MATERIALS["rubber"][2])[..., None]
    finite = np.isfinite(t)
    p = o + np.where(finite, t, 0)[..., None] * d[None]
    view = -d[None]
    lights = [((KEY_LIGHT[0] - p) / np.linalg.norm(KEY_LIGHT[0] - p, axis=-1, keepdims=True), KEY_LIGHT[1])]
    lights += [(np.broadcast_to(v / np.linalg.norm(v), p.shape), w) for v, w in DIR_LIGHTS]
    diffuse = np.full(first.shape + (1,), AMBIENT, np.float32)
    spec = np.zeros_like(diffuse)
    for l_dir, w in lights:
        ndl = np.clip((normal * l_dir).sum(-1, keepdims=True), 0, None)
        diffuse = diffuse + w * ndl
        hv = l_dir + view
        hv = hv / np.linalg.norm(hv, axis=-1, keepdims=True)
        spec = spec + w * np.where(ndl > 0, np.clip((normal * hv).sum(-1, keepdims=True), 0, None) ** shininess, 0)
    lin = albedo * kd * diffuse + ks * spec
    lin = np.where(finite[..., None], lin, SKY)
    srgb = np.clip(lin, 0, 1) ** (1 / 2.2)
    return np.round(srgb * 255).astype(np.uint8).reshape(n, *img_size, 3)


def _sample(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    s = N_OBJECTS[1]
    k = rng.integers(N_OBJECTS[0], N_OBJECTS[1] + 1, n)
    obj = {
        "present": np.arange(s)[None] < k[:, None],
        "shape": rng.integers(0, len(SHAPE_NAMES), (n, s)),
        "size": rng.integers(0, len(SIZES), (n, s)),
        "material": rng.integers(0, len(MATERIAL_NAMES), (n, s)),
        "color": rng.integers(0, len(COLORS), (n, s)),
        "angle": rng.uniform(0, np.pi / 2, (n, s)),
        "x": np.zeros((n, s)),
        "y": np.zeros((n, s)),
    }
    _, _, bound = _geometry(obj)
    for j in range(s):  # place objects one by one, each clear of the ones before
        todo = np.arange(n)
        while todo.size:
            obj["x"][todo, j], obj["y"][todo, j] = rng.uniform(-AREA, AREA, (2, todo.size))
            dist = np.hypot(obj["x"][todo, :j] - obj["x"][todo, j:j + 1], obj["y"][todo, :j] - obj["y"][todo, j:j + 1])
            clash = (dist < bound[todo, :j] + bound[todo, j:j + 1] + MIN_GAP) & obj["present"][todo, :j]
            todo = todo[clash.any(1) & obj["present"][todo, j]]
    return obj


def _too_hidden(obj: dict[str, np.ndarray], first: np.ndarray) -> np.ndarray:
    s = N_OBJECTS[1]
    counts = (first[:, None] == np.arange(s)[None, :, None]).sum(2)
    return ((counts < MIN_VISIBLE) & obj["present"]).any(1)


def generate(rng: np.random.Generator, n: int) -> Scenes:
    """``n`` CLEVR-like scenes drawn from ``rng`` (see the module docstring)."""
    obj = _sample(rng, n)
    first, t, normal = trace(obj)
    bad = np.flatnonzero(_too_hidden(obj, first))
    while bad.size:
        new = _sample(rng, bad.size)
        replace_rows(obj, new, bad)
        first[bad], t[bad], normal[bad] = trace(new)
        bad = bad[_too_hidden(new, first[bad])]
    images = shade(obj, first, t, normal)
    instance = (first + 1).astype(np.uint8).reshape(n, *IMG_SIZE)
    classes = np.concatenate([np.zeros((n, 1), np.uint8), (1 + 2 * obj["shape"] + obj["size"]).astype(np.uint8)], 1)
    semantic = classes[np.arange(n)[:, None, None], instance]
    return Scenes(images, instance, semantic, obj)


def params() -> dict:
    """The generation parameters recorded in ``meta.json``."""
    return {"img_size": list(IMG_SIZE), "n_objects": list(N_OBJECTS), "shapes": list(SHAPE_NAMES),
            "sizes": dict(zip(SIZE_NAMES, SIZES)), "materials": {k: list(v) for k, v in MATERIALS.items()},
            "colors": dict(zip(COLOR_NAMES, COLORS.tolist())), "classes": list(CLASS_NAMES),
            "camera": {"position": CAMERA.tolist(), "look_at": LOOK_AT.tolist(), "fov_deg": FOV_DEG},
            "area": [-AREA, AREA], "min_visible_pixels": MIN_VISIBLE, "shadows": False, "antialiasing": False}
