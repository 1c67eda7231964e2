"""The composed model (:mod:`vlp.models.model`), its config (:mod:`vlp.models.config`), its task
heads (:mod:`vlp.models.heads`) and the classic models as recipes (``recipes/*.yaml``).
Building one from a recipe and loading or saving one live in :mod:`vlp.io`."""
