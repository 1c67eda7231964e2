"""``vlp serve``: the HTTP API and web page over models and an image index (an application at the top layer).

:func:`vlp.serve.app.build_app` builds the FastAPI app from a :class:`~vlp.serve.predictor.Predictor`
(loaded models + an optional :class:`~vlp.serve.gallery.Gallery`) and :class:`~vlp.serve.limits.Limits`;
:mod:`vlp.serve.server` runs it on uvicorn. FastAPI and uvicorn are the ``serve`` extra.
"""
