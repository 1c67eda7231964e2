"""The bottom layer: what every other layer shares and nothing of vlp below it.

``vlp.config`` (typed configs, the one part registry) sits beside it; here live the shared
types that parts hand to each other (:mod:`vlp.core.outputs`).
"""
