"""Darknet models (``cloud-trainer import-darknet CFG WEIGHTS --names FILE --out RUN``): the cfg
(:mod:`.cfg`) and weights (:mod:`.weights`) read as darknet reads them, the same network built in
Keras (:mod:`.keras_model`), and a run directory that ``export`` and ``evaluate`` take like a
trained one (:mod:`.run`)."""
