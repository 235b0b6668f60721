"""Deletion diffusion presets: variable-length sequences of characters (``docs/deletion.md``).

``text-deletion``: the words of the pydoc corpus up to 16 characters (longer ones, 3% of them, left out), a small
encoder-decoder Transformer, sized to train in a couple of minutes on a CPU (1500 steps: about 65 s of CPU time).
It samples with the nested sampler in 4 steps: with a predictor this small more steps compound its errors
(``benchmarks/deletion.py``; docs/deletion.md has the figures):

    unidm train text-deletion --out runs/text-deletion
    unidm sample runs/text-deletion -n 200 --plot runs/text-deletion/words.png
    unidm eval runs/text-deletion -n 1000

The user's own text, one example a line: ``data.name=text-file-sequences data.path=FILE data.max_len=80``.
"""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    "text-deletion": {
        "family": "deletion",
        "data": {"name": "text-sequences", "unit": "words", "max_len": 16, "too_long": "drop", "max_test": 2000},
        "model": {"arch": "seq2seq", "width": 64, "enc_depth": 2, "dec_depth": 2, "heads": 4},
        "method": {"schedule": "linear"},
        "train": {"steps": 1500, "batch_size": 64, "lr": 2e-3, "warmup": 100, "ema_decay": 0.999,
                  "weight_decay": 0.01, "ckpt_every": 500},
        "sample": {"sampler": "nested", "steps": 4, "grid": "uniform-t", "n": 1000},
    },
}
