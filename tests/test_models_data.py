"""The prepared-data readers the models see: the item table and the dataset's batches."""

from __future__ import annotations

import pytest
import torch
from tests.tiny_data import TINY_GRANULARITIES, TINY_IMAGE_DIM, write_tiny_dataset

def test_item_table_reads_every_file_in_item_order(tiny_data):
    from marn.data.item_table import load_item_table

    table = load_item_table(tiny_data.prepared_dir, tiny_data.features_dir)
    assert table.n_items == 32 and table.n_categories == 5 and table.has_brands
    assert table.image.dtype == torch.float16 and table.image.shape == (32, TINY_IMAGE_DIM)
    assert [b.shape for b in table.stat_boundaries] == [(4, g - 1) for g in TINY_GRANULARITIES]
    assert table.statistic_names == ("n_reviews", "mean_rating", "price", "sales_rank")
    assert torch.isnan(table.statistics[:, 3]).any()
    assert table.n_behaviour_types == 2
    assert not table.image_mask[:2].any() and not table.image_mask[5]


def test_item_table_rejects_features_of_other_items(tiny_data, tmp_path):
    from marn.data.item_table import load_item_table
    from marn.items import ItemTableError

    other = write_tiny_dataset(tmp_path, n_items=12)
    with pytest.raises(ItemTableError, match="image.npy has 14 rows but items.parquet has 32 items"):
        load_item_table(tiny_data.prepared_dir, other.features_dir)
