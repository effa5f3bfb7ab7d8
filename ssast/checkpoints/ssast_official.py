"""``ssast-official``: the official SSAST ``.pth`` files, with or without DataParallel's
``module.``: pretrained (``v.*``, ``mask_embed``, ``cpredlayer``/``gpredlayer``,
``p_input_fdim/tdim``) or finetuned (``v.*``, ``mlp_head.*``)."""

from __future__ import annotations

from ssast.checkpoints.common import CheckpointError, Contents, Hints, Parsed, Preprocessing
from ssast.checkpoints.geometry import UNUSED_VIT_HEADS, inferred_geometry, shape_geometry
from ssast.encoder import EncoderConfig

FORMAT = "ssast-official"


def is_ssast_official(contents: Contents) -> bool:
    return "v.patch_embed.proj.weight" in contents.state


def parse_ssast_official(contents: Contents, hints: Hints) -> Parsed:
    path, state = contents.path, contents.state
    # timm's DeiT classifiers ride along in SSAST's files but are never used.
    encoder_state = {k[2:]: v for k, v in state.items() if k.startswith("v.") and not UNUSED_VIT_HEADS.match(k[2:])}
    if "p_input_tdim" in state:  # pretrained: the input size is recorded and stride = shape
        geometry = shape_geometry(path, FORMAT, encoder_state, hints)
        num_patches = encoder_state["pos_embed"].shape[1] - geometry["num_lead_tokens"]
        input_fdim, input_tdim = int(state["p_input_fdim"]), int(state["p_input_tdim"])
        grid = {"fstride": geometry["fshape"], "tstride": geometry["tshape"], "input_tdim": input_tdim}
        config = EncoderConfig(**geometry, **grid, input_fdim=input_fdim)
        if config.num_patches != num_patches:
            raise CheckpointError(path, FORMAT, f"p_input_tdim {input_tdim} does not match {num_patches} patches")
    else:
        config = EncoderConfig(**inferred_geometry(path, FORMAT, encoder_state, hints, pretrained=False))
    if "mask_embed" in state:
        encoder_state["mask_embed"] = state["mask_embed"]
    head_state = None
    if "mlp_head.1.weight" in state:
        head_state = {
            "norm.weight": state["mlp_head.0.weight"], "norm.bias": state["mlp_head.0.bias"],
            "linear.weight": state["mlp_head.1.weight"], "linear.bias": state["mlp_head.1.bias"],
        }
    used = {f"v.{k}" for k in encoder_state} | {"mask_embed", "p_input_fdim", "p_input_tdim"}
    used |= {f"mlp_head.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
    extra = {k: v for k, v in state.items() if k not in used and not UNUSED_VIT_HEADS.match(k.removeprefix("v."))}
    unexpected = [k for k in extra if not k.startswith(("cpredlayer.", "gpredlayer."))]
    if unexpected:
        raise CheckpointError(path, FORMAT, f"unexpected keys: {', '.join(sorted(unexpected)[:10])}")
    return Parsed(format=FORMAT, config=config, encoder_state=encoder_state,
                  preprocessing=Preprocessing(target_length=config.input_tdim), optional=frozenset({"mask_embed"}),
                  head_state=head_state, extra=extra)
