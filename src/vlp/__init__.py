"""vlp: vision-language pretraining, from representations to downstream tasks."""

from __future__ import annotations

__version__ = "0.1.0"

from vlp.data.batch import Batch  # noqa: E402
from vlp.models import list_models  # noqa: E402

__all__ = ["Batch", "__version__", "list_models"]
