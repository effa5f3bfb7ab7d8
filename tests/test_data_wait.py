"""DataWait measures the share of step-to-step time a run spends between its steps."""

import json
import time

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from ssast.train.callbacks import DataWait

PAUSE = 0.05


class Batches(IterableDataset):
    def __init__(self, pause: float) -> None:
        self.pause = pause

    def __iter__(self):
        for _ in range(12):
            time.sleep(self.pause)  # reading and decoding
            yield torch.randn(4, 8)


class Linear(L.LightningModule):
    def __init__(self, pause: float) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)
        self.pause = pause

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        time.sleep(self.pause)  # the device's work
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("slow_part", ["data", "step"])
def test_the_wait_between_steps_is_the_share_the_data_takes(tmp_path, slow_part):
    waits = DataWait(every_n_steps=4)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[waits],
                        default_root_dir=tmp_path)
    data_pause, step_pause = (PAUSE, 0.0) if slow_part == "data" else (0.0, PAUSE)
    trainer.fit(Linear(step_pause), DataLoader(Batches(data_pause), batch_size=None))
    summary = json.loads((tmp_path / "data_wait.json").read_text())
    assert summary["steps"] == 12 and summary["host_syncs_per_step"] is None  # syncs are counted on a GPU only
    # 11 gaps between 12 steps; each gap but one holds a batch's reading (Lightning fetches one batch ahead),
    # or each step a pause.
    assert summary["step_to_step_s"] >= 10 * PAUSE
    if slow_part == "data":
        assert summary["data_wait"] > 0.8 and summary["wait_s"] >= 10 * PAUSE
    else:
        assert summary["data_wait"] < 0.2


def test_data_wait_needs_a_positive_interval():
    with pytest.raises(ValueError, match="every_n_steps must be at least 1"):
        DataWait(every_n_steps=0)
