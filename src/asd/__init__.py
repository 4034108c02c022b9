"""asd: unsupervised anomalous sound detection for machine condition monitoring.

The package holds everything that training and serving share, so the two can never
compute features or scores differently:

- :mod:`asd.data`      DCASE file names, dataset listing, attribute tables
- :mod:`asd.audio`     loading WAV/FLAC into checked mono float32 samples
- :mod:`asd.features`  log-mel spectrogram and model patches (one function for all)
- :mod:`asd.scoring`   clip anomaly score, gamma decision threshold, verdict
- :mod:`asd.metrics`   AUC per domain, pAUC, official score, precision/recall/F1
- :mod:`asd.metadata`  what travels with an exported model, and the compatibility check
- :mod:`asd.serving`   backends: TF Serving REST client and in-process SavedModel
- :mod:`asd.inference` one clip from audio to verdict through any backend

Training (:mod:`asd.train`, :mod:`asd.model`, :mod:`asd.export`) needs TensorFlow;
nothing on the app's path imports it.
"""

__version__ = "0.1.0"
