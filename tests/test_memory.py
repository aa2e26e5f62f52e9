"""Flat memory at a size where holding every row would fail (issue 16 deliverable 6).

A child process writes a ~116 MB label store chunk by chunk (the writer relabel uses), reads
every row back through train's LabelPool (with an 8 MB decoded-chunk cache) and copies half
of the rows with prune's copy_rows. Its peak RSS may grow by at most half the store's
logical size over the baseline: keeping all rows alive would add the whole 116 MB (232 MB
as decoded float32 logits) and fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    import numpy as np
    from lpld_cli.data.label_pool import LabelPool
    from lpld_cli.prune import copy_rows
    from lpld_cli.storage.labels import LabelRows, LabelStore

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    root = Path(sys.argv[1])
    rows, b, c, chunk = 1200, 50, 1000, 16
    rng = np.random.default_rng(0)
    warm = rng.standard_normal((chunk, b, c), dtype=np.float32).astype(np.float16)
    baseline = peak_mb()
    attrs = {"batches_per_epoch": 24, "epochs": 100, "image_size": 28, "mix": "cutmix",
             "images_id": "x" * 64, "teacher_id": "y" * 64, "num_images": 1200}
    store = LabelStore.create(root / "a", rows, b, c, logits_dtype="float16", codec="none",
                              rows_per_chunk=chunk, attributes=attrs)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        store.write(start, LabelRows(
            batch_id=np.arange(start, start + n, dtype=np.int32),
            image_index=rng.integers(0, 1200, (n, b), dtype=np.int32),
            crop=rng.random((n, b, 4), dtype=np.float32),
            flip=rng.random((n, b)) < 0.5,
            mix_index=rng.integers(0, b, (n, b), dtype=np.int32),
            mix_lambda=rng.random(n, dtype=np.float32),
            mix_box=rng.integers(0, 28, (n, 4), dtype=np.int32),
            logits=rng.standard_normal((n, b, c), dtype=np.float32).astype(np.float16)))
    after_write = peak_mb()
    pool = LabelPool(LabelStore.open(root / "a"), cache_bytes=8 << 20)
    total = 0.0
    for i in range(rows):
        row, target = pool.get(i)  # full logits: target.logits
        total += float(target.logits[0, 0])
    after_read = peak_mb()
    keep = np.arange(0, rows, 2)
    target = LabelStore.create(root / "b", len(keep), b, c, codec="none", rows_per_chunk=chunk,
                               attributes=attrs)
    copy_rows(LabelStore.open(root / "a"), keep, target)
    after_copy = peak_mb()
    logical = sum(int(a.nbytes) for a in store.arrays.values())
    print(json.dumps({"baseline": baseline, "write": after_write, "read": after_read,
                      "copy": after_copy, "logical_mb": logical / 2**20}))
""")


def test_peak_memory_stays_flat_at_a_size_that_cannot_fit(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    peaks = json.loads(proc.stdout.strip().splitlines()[-1])
    assert peaks["logical_mb"] > 110  # every row at once would add this much
    budget = peaks["logical_mb"] / 2
    for stage in ("write", "read", "copy"):
        assert peaks[stage] - peaks["baseline"] < budget, (stage, peaks)
