"""Layers of MARN, each built on plain torch or on the custom ops in marn.ops."""

from marn.nn.apgru import APGRU
from marn.nn.statistic_embedding import StatisticEmbedding

__all__ = ["APGRU", "StatisticEmbedding"]
from marn.nn.adversarial import CrossModalAdversary, DoubleDiscriminatorAdversary, ModalityDiscriminator
from marn.nn.candidate_attention import CandidateAttention
from marn.nn.fusion import ModalitySum, MultimodalAttentionFusion, PerModalityLinear
from marn.nn.gradient_reversal import reverse_gradient
from marn.nn.mlp import MLP
from marn.nn.modality_embedding import BehaviourPropertyEmbedding, ModalityEmbedding
from marn.nn.title_cnn import TitleCNN
