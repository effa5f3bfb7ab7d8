"""Loading encoders from this project's files and from the official SSAST, Hugging Face AST,
ASiT and EAT (and SSLAM) releases; exporting them.

:func:`load_checkpoint` recognizes the file (:mod:`~ssast.checkpoints.registry` tries the
formats in a stated order), maps its parameter names onto
:class:`~ssast.encoder.ASTEncoder`'s (timm's ViT names), reads the geometry the weights were
trained at, loads strictly and then, if asked for another stride or input length, adapts the
position embedding. Every ``torch.load`` is ``weights_only=True``: a file that would run code
is refused. Anything unexpected (an unknown layout, a missing or extra key, a shape that does
not fit) raises :class:`CheckpointError` naming the file, the format it looked like and the
keys at fault; nothing is ever loaded partially.

Formats, one module each (its recognition and its parser):

* ``ssast-encoder`` and ``ssast-lightning`` (:mod:`~ssast.checkpoints.ours`): written by
  :func:`save_encoder` (``.pt`` or ``.safetensors``), a ``save_pretrained`` folder of
  :class:`ssast.hub.HubEncoder` (with its classifier, if any), or a Lightning checkpoint of
  this project (``state_dict`` with the ``encoder_prefix`` beside it, ``encoder.`` or ASiT's
  ``teacher.``, and ``encoder_config``; a finetuning run's also its ``classifier``: see
  :func:`lightning_metadata`, in :mod:`~ssast.checkpoints.metadata`);
* ``ssast-official`` (:mod:`~ssast.checkpoints.ssast_official`): the official SSAST ``.pth``
  files, pretrained (``module.v.*``, ``mask_embed``, ``cpredlayer``/``gpredlayer``,
  ``p_input_fdim/tdim``) or finetuned (``module.v.*``, ``module.mlp_head.*``), with or
  without DataParallel's ``module.``;
* ``huggingface-ast`` (:mod:`~ssast.checkpoints.huggingface`): ``ASTModel`` /
  ``ASTForAudioClassification``, as a ``save_pretrained`` folder or a bare state dict, in
  transformers 4 or 5 names; also the name table :data:`HF_AST_NAMES` and
  :func:`to_huggingface_state`, which exports to them;
* ``asit`` (:mod:`~ssast.checkpoints.asit`): an ASiT ``.pt`` with timm ViT keys, possibly
  under ``teacher``/``student``;
* ``eat`` (:mod:`~ssast.checkpoints.eat`): EAT's (and SSLAM's) fairseq ``.pt`` files,
  pretrained (with the EMA teacher and the decoder) or finetuned, and its Hugging Face folders
  (``model_type: eat``), loaded into the encoder's EAT layout;
* ``imagenet-vit`` (:mod:`~ssast.checkpoints.imagenet`): a timm/DeiT ImageNet ViT (RGB patch
  projection), adapted to audio as AST does (:func:`imagenet_to_audio`).

What they share is in :mod:`~ssast.checkpoints.common` and :mod:`~ssast.checkpoints.geometry`;
building the encoder a file describes in :mod:`~ssast.checkpoints.loading`.
"""

from ssast.checkpoints.common import Checkpoint, CheckpointError, Preprocessing, refusal_reason
from ssast.checkpoints.huggingface import HF4, HF5, HF_AST_NAMES, HF_ENCODER_PREFIX, OURS, to_huggingface_state
from ssast.checkpoints.imagenet import IMAGENET_AUDIO_DEFAULTS, imagenet_to_audio
from ssast.checkpoints.loading import ADJUSTABLE, adapt_encoder, check_fits, load_checkpoint, load_encoder
from ssast.checkpoints.metadata import lightning_metadata
from ssast.checkpoints.ours import OUR_FORMAT, classifier_record, save_encoder

__all__ = [
    "ADJUSTABLE", "HF4", "HF5", "HF_AST_NAMES", "HF_ENCODER_PREFIX", "IMAGENET_AUDIO_DEFAULTS", "OURS", "OUR_FORMAT",
    "Checkpoint", "CheckpointError", "Preprocessing", "adapt_encoder", "check_fits", "classifier_record",
    "imagenet_to_audio", "lightning_metadata", "load_checkpoint", "load_encoder", "refusal_reason", "save_encoder", "to_huggingface_state",
]
