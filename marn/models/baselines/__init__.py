"""The baselines of the paper's Table 2 (§4.2), one short file each; `BASELINES` maps the paper's names to them."""

from marn.models.baselines.dien import DIEN
from marn.models.baselines.dmf import DMF
from marn.models.baselines.dupn import DUPN
from marn.models.baselines.fm import FM
from marn.models.baselines.lr import LR
from marn.models.baselines.mmss import MMSS
from marn.models.baselines.naml import NAML
from marn.models.baselines.xdeepfm import XDeepFM
from marn.models.baselines.youtubenet import YoutubeNet

BASELINES = {
    "LR": LR,
    "FM": FM,
    "YoutubeNet": YoutubeNet,
    "xDeepFM": XDeepFM,
    "DUPN": DUPN,
    "DIEN": DIEN,
    "DMF": DMF,
    "MMSS": MMSS,
    "NAML": NAML,
}

__all__ = ["BASELINES", "DIEN", "DMF", "DUPN", "FM", "LR", "MMSS", "NAML", "XDeepFM", "YoutubeNet"]
