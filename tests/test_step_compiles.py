"""Each method's training step is one graph: ``torch.compile(fullgraph=True)`` takes the
forward and the losses whole (no graph break, no ``.item()``, no data-dependent shape), and
backward runs through the compiled graph. What a step draws at random comes before it
(``draw``), so a GPU never waits on the host inside the step."""

import pytest
import torch

from pretrain.asit import ASiT
from pretrain.eat import EAT
from pretrain.mspm import MSPM
from ssast.schedules import Progress

FRAME_MODEL = dict(size="mini", fshape=128, tshape=2, input_tdim=64, drop_path=0.0)
PATCH_MODEL = dict(size="mini", fshape=16, tshape=16, input_tdim=64, drop_path=0.0)
METHODS = {
    "mspm-1-pass-frames": lambda: MSPM(mask_patches=12, passes=1, **FRAME_MODEL),
    "mspm-2-pass-clusters": lambda: MSPM(mask_patches=12, passes=2, **PATCH_MODEL),
    "asit": lambda: ASiT(view_frames=48, cls_prototypes=64, patch_prototypes=32, head_hidden_dim=64,
                         head_bottleneck_dim=32, **PATCH_MODEL),
    "eat": lambda: EAT(clone_batch=3, **PATCH_MODEL),
}


@pytest.mark.slow  # 5 to 8 s each
@pytest.mark.parametrize("method", METHODS)
def test_each_methods_step_compiles_whole(method):
    torch.manual_seed(0)
    model = METHODS[method]().train()
    fbank = torch.randn(2, 64, 128)
    draws = model.draw(fbank, torch.Generator().manual_seed(0))
    progress = Progress(step=3, total_steps=10, steps_per_epoch=5)

    eager = model.losses(fbank, draws, progress)
    eager["loss"].backward()
    eager_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    # fullgraph: any graph break is an error; aot_eager traces the backward too, without inductor's codegen.
    compiled = torch.compile(model.losses, fullgraph=True, backend="aot_eager")(fbank, draws, progress)
    compiled["loss"].backward()

    assert compiled.keys() == eager.keys()
    for name, value in eager.items():
        torch.testing.assert_close(torch.as_tensor(compiled[name]), torch.as_tensor(value), rtol=1e-4, atol=1e-5)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == eager_grads.keys() and any(name.startswith("encoder.") for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_a_step_is_its_draws_then_its_losses(method):
    torch.manual_seed(0)
    model = METHODS[method]().eval()  # no updates queued, nothing moved
    fbank = torch.randn(2, 64, 128)
    start = Progress(step=0, total_steps=1, steps_per_epoch=1)
    whole = model.step(fbank, start, torch.Generator().manual_seed(5))
    parts = model.losses(fbank, model.draw(fbank, torch.Generator().manual_seed(5)), start)
    assert torch.equal(whole["loss"], parts["loss"])
