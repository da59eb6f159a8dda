"""Words and looks of the synthetic catalogue: which title words and which pixels express each factor level.

Every factor is categorical. A shared factor's level has a word cluster AND a look; an image-only level has a
look alone; a title-only level has words alone. Levels are listed most-distinct first, because a run with
`factor_levels = L` uses the first L of each family. Words are common English, so real word vectors (GloVe)
place a cluster's words near each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FactorFamily:
    name: str
    words: tuple[tuple[str, ...], ...]  # one cluster per level; empty clusters for image-only families
    looks: tuple[Any, ...]  # one rendering parameter per level; None for title-only families

    @property
    def levels(self) -> int:
        return len(self.words) if self.words else len(self.looks)


# Shared factors: in the image AND in the title.
SHARED_FAMILIES = (
    FactorFamily(
        "colour",
        (("red", "crimson", "scarlet"), ("blue", "navy", "azure"), ("green", "olive", "lime"),
         ("yellow", "gold", "lemon"), ("purple", "violet", "lavender")),
        (0.0, 0.62, 0.31, 0.14, 0.79),  # object hue
    ),
    FactorFamily(
        "tone",
        (("vivid", "bold", "bright"), ("pale", "soft", "gentle"), ("dark", "deep", "shadow"),
         ("dusty", "faded", "muted"), ("grey", "silver", "ash")),
        ((1.0, 0.95), (0.3, 1.0), (0.85, 0.4), (0.45, 0.7), (0.08, 0.75)),  # object (saturation, value)
    ),
    FactorFamily(
        "scene",
        (("beach", "sand", "summer"), ("forest", "garden", "jungle"), ("ocean", "sea", "wave"),
         ("night", "midnight", "moon"), ("snow", "winter", "ice")),
        ((0.93, 0.85, 0.62), (0.2, 0.45, 0.2), (0.55, 0.75, 0.95), (0.08, 0.08, 0.2), (0.95, 0.95, 0.97)),
    ),
    FactorFamily(
        "size",
        (("mini", "small", "tiny"), ("large", "big", "giant"), ("medium", "regular", "standard"),
         ("pocket", "little", "compact"), ("grand", "massive", "huge")),
        (0.32, 0.78, 0.55, 0.43, 0.9),  # object radius, as a share of half the image width
    ),
    FactorFamily(
        "finish",
        (("glossy", "shiny", "polished"), ("matte", "flat", "plain"), ("satin", "smooth", "silky"),
         ("sparkle", "glitter", "crystal"), ("rough", "rugged", "textured")),
        (0.85, 0.0, 0.45, 0.65, 0.2),  # strength of the white highlight on the object
    ),
)

# Image-only factors: in the image alone.
IMAGE_FAMILIES = (
    FactorFamily("shape", (), ("circle", "square", "triangle", "diamond", "cross")),
    FactorFamily("stripes", (), (1.5, 3.0, 5.0, 8.0, 12.0)),  # stripe cycles across the image
    FactorFamily("stripe_angle", (), (0.0, 90.0, 45.0, 135.0, 22.5)),  # degrees
    FactorFamily("position", (), ((0.0, 0.0), (-0.22, -0.22), (0.22, 0.22), (0.22, -0.22), (-0.22, 0.22))),
    FactorFamily("backdrop", (), ("flat", "vertical", "horizontal", "checker", "dots")),  # background pattern
)

# Title-only factors: in the title alone.
TITLE_FAMILIES = (
    FactorFamily(
        "material",
        (("cotton", "wool", "silk"), ("metal", "steel", "iron"), ("wood", "wooden", "oak"),
         ("plastic", "rubber", "vinyl"), ("leather", "suede", "hide")),
        (None,) * 5,
    ),
    FactorFamily(
        "audience",
        (("men", "mens", "gentlemen"), ("women", "womens", "ladies"), ("kids", "children", "baby"),
         ("family", "home", "household"), ("professional", "office", "business")),
        (None,) * 5,
    ),
    FactorFamily(
        "use",
        (("travel", "portable", "hiking"), ("sport", "running", "fitness"), ("party", "holiday", "gift"),
         ("kitchen", "cooking", "dining"), ("school", "study", "classroom")),
        (None,) * 5,
    ),
    FactorFamily(
        "pack",
        (("single", "one", "solo"), ("two", "double", "twin"), ("set", "pack", "bundle"),
         ("collection", "combo", "kit"), ("three", "trio", "triple")),
        (None,) * 5,
    ),
    FactorFamily(
        "era",
        (("vintage", "retro", "antique"), ("modern", "contemporary", "futuristic"),
         ("classic", "traditional", "timeless"), ("urban", "city", "street"), ("rustic", "country", "farmhouse")),
        (None,) * 5,
    ),
)

MAX_FACTOR_LEVELS = min(f.levels for f in SHARED_FAMILIES + IMAGE_FAMILIES + TITLE_FAMILIES)
SYNONYMS = 3  # words in every cluster

# (word in titles, leaf category name in meta)
CATEGORIES = (
    ("camera", "Cameras"), ("speaker", "Speakers"), ("keyboard", "Keyboards"), ("charger", "Chargers"),
    ("watch", "Watches"), ("bag", "Bags & Cases"), ("radio", "Radios"), ("guitar", "Guitars"),
    ("clock", "Clocks"), ("television", "Televisions"), ("laptop", "Laptops"), ("earbuds", "Earbuds"),
    ("player", "Media Players"), ("flashlight", "Flashlights"), ("headphones", "Headphones"), ("mouse", "Mice"),
    ("monitor", "Monitors"), ("battery", "Batteries"), ("tablet", "Tablets"), ("printer", "Printers"),
    ("router", "Routers"), ("microphone", "Microphones"), ("projector", "Projectors"), ("tripod", "Tripods"),
    ("lens", "Lenses"), ("cable", "Cables"), ("adapter", "Adapters"), ("remote", "Remote Controls"),
    ("scanner", "Scanners"), ("stereo", "Stereos"),
)

FILLER_WORDS = ("with", "for", "and", "the", "new", "edition", "series", "design", "style", "model", "original")

_BRAND_HEADS = ("Zen", "Vor", "Lum", "Kel", "Tor", "Nix", "Ara", "Bel", "Cor", "Dex",
                "Fal", "Gor", "Hal", "Ivo", "Jax", "Kor", "Lex", "Mar", "Nov", "Orb")
_BRAND_TAILS = ("tek", "ora", "ix", "on", "ava", "ex", "is", "us", "ar", "io")
_BRAND_MIDDLES = ("ri", "la", "mo", "ve", "su", "ka", "ne", "do", "pi", "te")

FIRST_NAMES = (
    "Linda", "James", "Maria", "David", "Susan", "Robert", "Karen", "Michael", "Nancy", "John", "Lisa", "Paul",
    "Sandra", "Mark", "Donna", "Steven", "Carol", "Kevin", "Ruth", "Brian", "Sharon", "Gary", "Laura", "Eric",
    "Amy", "Jason", "Helen", "Ryan", "Anna", "Peter", "Emma", "Frank", "Grace", "Henry", "Julia", "Adam",
)

# Review sentences and summaries by rating band: 0 = 1-2 stars, 1 = 3 stars, 2 = 4-5 stars.
REVIEW_SENTENCES = (
    ("The {noun} stopped working after a week.", "Not worth the money.", "The {noun} feels cheap.",
     "I returned it.", "Instructions were useless.", "It broke the first time I used it.",
     "Would not buy this {noun} again.", "Customer service never answered."),
    ("It is okay for the price.", "The {noun} does the job but nothing special.", "Shipping was slow.",
     "Some parts feel flimsy.", "It works, mostly.", "I expected a bit more from this {noun}.",
     "Average quality overall.", "Not bad, not great."),
    ("I love this {noun}.", "Works exactly as described.", "Great {noun} for the price.", "Would buy again.",
     "Arrived quickly and well packed.", "I use it every day.", "Solid build and easy to set up.",
     "Highly recommended to anyone looking for a {noun}."),
)
REVIEW_SUMMARIES = (
    ("Disappointed", "Poor quality", "Not as expected", "Waste of money"),
    ("It's OK", "Average", "Does the job", "Could be better"),
    ("Great {noun}", "Love it", "Excellent", "Just what I needed"),
)


def brand_name(index: int) -> str:
    """A made-up, pronounceable, unique brand name for every index."""
    head = _BRAND_HEADS[index % len(_BRAND_HEADS)]
    tail = _BRAND_TAILS[(index + index // len(_BRAND_HEADS)) % len(_BRAND_TAILS)]  # neighbours differ in both
    rest = index // (len(_BRAND_HEADS) * len(_BRAND_TAILS))
    if rest == 0:
        return head + tail
    middle = _BRAND_MIDDLES[(rest - 1) % len(_BRAND_MIDDLES)]
    suffix = (rest - 1) // len(_BRAND_MIDDLES)
    return head + middle + tail + (str(suffix + 1) if suffix else "")


def category_name(index: int) -> tuple[str, str]:
    """(title word, leaf name) of a category; past the list, leaf names get a series number."""
    word, leaf = CATEGORIES[index % len(CATEGORIES)]
    series = index // len(CATEGORIES)
    return word, leaf if series == 0 else f"{leaf} {series + 1}"
