"""A run started before vlp gained an option resumes: the option's default is no change."""

from __future__ import annotations

import copy

from vlp.config import to_dict
from vlp.recipe import load_recipe
from vlp.train.run_dir import recipe_differences


def test_an_option_added_since_the_run_started_is_no_difference():
    current = to_dict(load_recipe("clip-tiny"))
    saved = copy.deepcopy(current)
    del saved["objectives"]["itc"]["queue_size"]  # a run saved before the ITC queue existed
    del saved["model"]["logit_bias"]  # ... and before SigLIP's logit bias
    assert recipe_differences(saved, current) == []
    changed = copy.deepcopy(saved)
    changed["objectives"]["itc"]["temperature"] = 0.5
    assert recipe_differences(changed, current) == ["objectives.itc.temperature: 0.5 in the run, null now"]
    # an option the run set away from its default still counts
    current["objectives"]["itc"]["queue_size"] = 16
    assert recipe_differences(saved, current) == ["objectives.itc.queue_size: 0 in the run, 16 now"]
