"""ssast: self-supervised pretraining of Audio Spectrogram Transformers."""

__version__ = "0.1.0.dev0"
