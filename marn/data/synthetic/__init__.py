"""The embedded default dataset: a synthetic catalogue and its reviews, written in the Amazon 2014 format.

Items have a category, a brand, shared factors (shown in both image and title), image-only and title-only
factors, and a quality; users choose items by a softmax over their taste for those factors, their category
affinity, quality and popularity. Images and titles thus carry what IDs cannot give for rare and cold items,
and `truth.npz` keeps every latent so later stages can score against the true probabilities.
docs/synthetic.md tells the whole story.
"""

from marn.data.synthetic.choice import ChoiceModel, load_choice_model, true_click_probability
from marn.data.synthetic.generator import check_config, generate

__all__ = ["ChoiceModel", "check_config", "generate", "load_choice_model", "true_click_probability"]
