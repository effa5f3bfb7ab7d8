"""A shard read with retries (:class:`ShardSamples`): a shard that cannot be opened or read
is retried, then skipped with a warning naming it and counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from contextlib import closing
from typing import TYPE_CHECKING, Any

from ssast.data.tar import shard_samples

if TYPE_CHECKING:
    from ssast.data.stream import ShardStream

log = logging.getLogger(__name__)


class ShardSamples:
    """The samples of one shard, read with retries: opening or reading it is retried
    ``stream.options.shard_retries`` times with a doubling delay, and a retry picks up after the
    samples already given, so none is given twice (nor the end of a shard lost to a
    dropped connection). A shard that still fails is skipped with a warning naming it,
    counted, and marked ``failed``. Reading is strict (:func:`shard_samples`): a shard
    cut short fails rather than end early. Closed before its end, it closes the shard."""

    def __init__(self, stream: ShardStream, url: str) -> None:
        self.stream, self.url = stream, url
        self.failed = False

    def __iter__(self) -> Generator[dict[str, Any], None, None]:
        stream, options, given = self.stream, self.stream.options, 0
        for attempt in range(options.shard_retries + 1):
            try:
                with closing(shard_samples(self.url)) as samples:
                    for index, sample in enumerate(samples):
                        if index >= given:
                            given += 1
                            yield sample
                return
            except Exception as error:  # opening and reading fail in many ways: OSError, tarfile, pipes
                reason = f"{type(error).__name__}: {error}"
            if attempt < options.shard_retries:
                delay = options.retry_delay * 2**attempt
                stream.skips.add("shard_retries")
                log.warning("shard %s failed (%s); retry %d of %d in %g s",
                            self.url, reason, attempt + 1, options.shard_retries, delay)
                time.sleep(delay)
        stream.skips.add("failed_shards")
        log.warning("skipped shard %s after %d attempts (%d samples read from it): %s",
                    self.url, options.shard_retries + 1, given, reason)
        self.failed = True
