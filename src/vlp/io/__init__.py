"""Every on-disk layout, in one place: model folders (:mod:`vlp.io.saving`), building a model from
a recipe (:mod:`vlp.io.factory`), and turning any path a user holds (a model, run or checkpoint
folder, a transformers or OpenCLIP checkpoint, a hub model id) into recipe + weights + tokenizer +
preprocessing (:mod:`vlp.io.folders`). Converters of other projects' weights live beside it in
:mod:`vlp.interop`; commands, tasks and the training engine load through here."""
