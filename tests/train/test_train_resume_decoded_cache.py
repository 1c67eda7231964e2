"""A resumed run may switch the decoded-image store on or off: its samples are the same bit for bit."""

from __future__ import annotations

import copy

from vlp.config import to_dict
from vlp.recipe import load_recipe
from vlp.train.run_dir import recipe_differences


def test_decoded_cache_may_change_on_resume() -> None:
    saved = to_dict(load_recipe("clip-tiny"))
    current = copy.deepcopy(saved)
    current["data"]["decoded_cache"] = "/tmp/decoded"
    assert recipe_differences(saved, current) == []
    current["data"]["image_size"] = 48  # what the samples are still may not change
    assert recipe_differences(saved, current) == ["data.image_size: 32 in the run, 48 now"]
