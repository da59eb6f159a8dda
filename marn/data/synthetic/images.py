"""Item pictures: a striped shape on a backdrop, drawn from the item's shared and image-only factor levels.

Shared factors set the object's colour, tone, size and highlight and the backdrop colour (the title names
them too); image-only factors set the shape, the stripes, the position and the backdrop pattern. Every
parameter is jittered and pixel noise is added, so no pixel reads off a factor exactly.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from marn.data.synthetic.lexicon import IMAGE_FAMILIES, SHARED_FAMILIES

SHAPES = next(f.looks for f in IMAGE_FAMILIES if f.name == "shape")
BACKDROPS = next(f.looks for f in IMAGE_FAMILIES if f.name == "backdrop")

# The look of a family the configuration leaves out: a neutral value that all items share.
_NEUTRAL_LOOKS = {
    "colour": 0.58, "tone": (0.5, 0.8), "scene": (0.6, 0.6, 0.6), "size": 0.55, "finish": 0.0,
    "shape": "circle", "stripes": 4.0, "stripe_angle": 0.0, "position": (0.0, 0.0), "backdrop": "flat",
}
_CODED_LOOKS = {"shape": SHAPES, "backdrop": BACKDROPS}  # looks given by name, rendered by code


def item_looks(shared_levels: np.ndarray, image_levels: np.ndarray) -> dict[str, np.ndarray]:
    """Rendering parameters per item from its level of each configured family (neutral for the others)."""
    n_items = shared_levels.shape[0]
    families = list(zip(SHARED_FAMILIES, shared_levels.T)) + list(zip(IMAGE_FAMILIES, image_levels.T))
    given = {family.name: (family.looks, levels) for family, levels in families}
    looks = {}
    for name, neutral in _NEUTRAL_LOOKS.items():
        table, levels = given.get(name, ((neutral,), np.zeros(n_items, dtype=np.int64)))
        if name in _CODED_LOOKS:
            table = tuple(_CODED_LOOKS[name].index(value) for value in table)
        looks[name] = np.asarray(table, dtype=np.float64)[levels]
    return looks


def render(looks: dict[str, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one picture per item: uint8 array of shape (items, size, size, 3)."""
    n = len(looks["colour"])
    axis = ((np.arange(size) + 0.5) / size * 2.0 - 1.0).astype(np.float32)  # pixel centres in [-1, 1]
    y = axis[None, :, None]
    x = axis[None, None, :]

    def per_item(values):  # float32 and shaped to broadcast over pixels, so images compute in float32
        return np.asarray(values, dtype=np.float32)[:, None, None]

    centre = looks["position"] + rng.normal(0.0, 0.04, (n, 2))
    cx, cy = per_item(centre[:, 0]), per_item(centre[:, 1])
    r = per_item(looks["size"] * np.exp(rng.normal(0.0, 0.06, n)))
    dx, dy = np.broadcast_arrays((x - cx) / r, (y - cy) / r)
    inside = _shape_masks(looks["shape"].astype(np.int64), dx, dy)

    angle = per_item(np.deg2rad(looks["stripe_angle"] + rng.normal(0.0, 4.0, n)))
    phase = per_item(rng.uniform(0.0, 2.0 * np.pi, n))
    along = x * np.cos(angle) + y * np.sin(angle)
    stripe_band = np.sin(along * per_item(looks["stripes"] * np.pi) + phase) > 0.0

    hue = (looks["colour"] + rng.normal(0.0, 0.012, n)) % 1.0
    saturation = np.clip(looks["tone"][:, 0] + rng.normal(0.0, 0.04, n), 0.0, 1.0)
    value = np.clip(looks["tone"][:, 1] + rng.normal(0.0, 0.04, n), 0.0, 1.0)
    colour = _hsv_to_rgb(hue, saturation, value).astype(np.float32)[:, None, None, :]
    body = colour * (1.0 - 0.4 * stripe_band[..., None].astype(np.float32))
    glare = per_item(looks["finish"]) * np.exp(
        -((x - cx + 0.35 * r) ** 2 + (y - cy + 0.35 * r) ** 2) / (2.0 * (0.35 * r) ** 2))
    body += (1.0 - body) * glare[..., None]

    shading = _backdrop_shading(looks["backdrop"].astype(np.int64), axis).astype(np.float32)
    pixels = np.where(inside[..., None], body, looks["scene"].astype(np.float32)[:, None, None, :] * shading[..., None])
    pixels += 0.035 * rng.standard_normal(pixels.shape, dtype=np.float32)
    return (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


_SHAPE_TESTS = {  # (dx, dy): offsets from the centre in radii, y pointing down
    "circle": lambda dx, dy: dx**2 + dy**2 <= 1.0,
    "square": lambda dx, dy: np.maximum(np.abs(dx), np.abs(dy)) <= 0.85,
    "triangle": lambda dx, dy: (dy <= 0.8) & (np.abs(dx) <= (dy + 1.0) / 1.8),  # apex up
    "diamond": lambda dx, dy: np.abs(dx) + np.abs(dy) <= 1.1,
    "cross": lambda dx, dy: (np.minimum(np.abs(dx), np.abs(dy)) <= 0.33) & (np.maximum(np.abs(dx), np.abs(dy)) <= 1.0),
}


def _shape_masks(shape: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    inside = np.zeros(dx.shape, dtype=bool)
    for code, name in enumerate(SHAPES):
        rows = shape == code
        if rows.any():
            inside[rows] = _SHAPE_TESTS[name](dx[rows], dy[rows])
    return inside


def _backdrop_shading(pattern: np.ndarray, axis: np.ndarray) -> np.ndarray:
    y, x = np.meshgrid(axis, axis, indexing="ij")
    shadings = {
        "flat": np.ones_like(x),
        "vertical": 0.75 + 0.2 * (y + 1.0),
        "horizontal": 0.75 + 0.2 * (x + 1.0),
        "checker": 1.0 + 0.15 * np.sign(np.sin(4.0 * np.pi * x) * np.sin(4.0 * np.pi * y)),
        "dots": 1.0 - 0.3 * (np.sin(5.0 * np.pi * x) * np.sin(5.0 * np.pi * y) > 0.6),
    }
    return np.stack([shadings[name] for name in BACKDROPS])[pattern]


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    sector = hue * 6.0
    channel_offsets = np.array([5.0, 3.0, 1.0])  # red, green, blue
    k = (channel_offsets[None, :] + sector[:, None]) % 6.0
    ramp = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return value[:, None] * (1.0 - saturation[:, None] * ramp)
