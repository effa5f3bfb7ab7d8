"""ssast: self-supervised pretraining of Audio Spectrogram Transformers."""

from ssast.checkpoints import Checkpoint, CheckpointError, Preprocessing, load_checkpoint, load_encoder, save_encoder
from ssast.embed import Embedder, Embeddings, WindowEmbeddings
from ssast.encoder import ASTEncoder, EncoderConfig
from ssast.hub import HubEncoder
from ssast.windows import Windowing

__version__ = "0.1.0.dev0"
__all__ = [
    "ASTEncoder", "Checkpoint", "CheckpointError", "Embedder", "Embeddings", "EncoderConfig", "HubEncoder",
    "Preprocessing", "WindowEmbeddings", "Windowing", "load_checkpoint", "load_encoder", "save_encoder",
]
