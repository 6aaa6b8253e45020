"""The trainer of the reference detectors, one concept per module:

* :mod:`~detloss.app.training.config`: :class:`TrainConfig`, the settings of a run;
* :mod:`~detloss.app.training.tasks`: per task the model, loss, decoding and metrics;
* :mod:`~detloss.app.training.data`: the datasets of a run;
* :mod:`~detloss.app.training.loop`: :func:`train`, the epoch loop;
* :mod:`~detloss.app.training.run`: a run's state and its preparation;
* :mod:`~detloss.app.training.checkpoints`: atomic writes, safe reads, rebuilding a model;
* :mod:`~detloss.app.training.resume`: what a checkpoint holds to resume, and resuming;
* :mod:`~detloss.app.training.ddp`: DDP set-up and the naming of a silent rank;
* :mod:`~detloss.app.training.evaluation`: predictions, metrics, the predictions JSON;
* :mod:`~detloss.app.training.logs`: ``metrics.csv``, TensorBoard and progress pictures;
* :mod:`~detloss.app.training.formatting`: printed numbers, JSON without NaN, atomic writes.

:mod:`detloss.app.train` gathers the public names in one place.
"""
