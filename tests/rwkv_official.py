"""Run BlinkDL's ``rwkv`` package (the official RWKV-5/6/7 inference code) on a checkpoint.

A subprocess of the tests (the package reads ``RWKV_V7_ON`` / ``RWKV_CUDA_ON`` / ``RWKV_JIT_ON``
at import, and its RWKV-7 class shadows the v4-v6 one while v7 is on).  Usage::

    python rwkv_official.py SPEC OUT

``SPEC`` is a ``torch.save`` of ``{"model": path without .pth, "runs": [{"tokens": [...],
"edit": None | {"after": t, "index": i, "delta": tensor}}]}``.  Each run feeds the tokens once
as a sequence (``full_output=True``) and once token by token, copying the state list after
every token (and adding ``delta`` to ``state[index]`` after token ``after``).  ``OUT`` gets
``[{"sequence_logits": [T, V], "step_logits": [T, V], "states": T lists of 3 * layers
tensors}]``, in the package's layouts.
"""

import sys

import torch
from rwkv.model import RWKV


def main(spec_path: str, out_path: str) -> None:
    spec = torch.load(spec_path, weights_only=False)
    model = RWKV(model=spec["model"], strategy="cpu fp32")
    results = []
    for run in spec["runs"]:
        tokens, edit = run["tokens"], run.get("edit")
        sequence_logits, _ = model.forward(list(tokens), None, full_output=True)
        state, step_logits, states = None, [], []
        for t, token in enumerate(tokens):
            logits, state = model.forward([token], state)
            state = [part.clone() for part in state]
            if edit is not None and t == edit["after"]:
                state[edit["index"]] = state[edit["index"]] + edit["delta"].to(state[0].dtype)
            step_logits.append(logits.float())
            states.append([part.float().clone() for part in state])
        results.append(
            {
                "sequence_logits": sequence_logits.float(),
                "step_logits": torch.stack(step_logits),
                "states": states,
            }
        )
    torch.save(results, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
