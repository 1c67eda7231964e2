"""Import every part module so that recipe ``type`` keys resolve to them."""

import vlp.fusion  # noqa: F401
import vlp.text  # noqa: F401
import vlp.vision  # noqa: F401
