"""Micro-batched rollouts (cluster.rollout_rows_per_forward, cluster.rollout_images_per_decode): every
transformer call and VAE decode stays within its limit, and the rollout is the unchunked one up to the
last bits of CPU kernels.

Not bit-identical, and no code can make it so on CPU: MKL's sgemm and oneDNN's convolutions pick their
kernel by the number of rows, so a row's result depends on its batch (measured on the shipped model:
the timestep embedder's [rows, 256] matmul is the first to differ, velocities by up to 3e-5; bf16
differs the same way for some row counts; a single-image VAE decode differs from a batched one). The
rows themselves never interact, which is what this test bounds.
"""

from __future__ import annotations

import pytest
import torch

from algorithms import ALGORITHMS
from models.config import LoraSettings, ModelConfig, SamplingConfig
from rollout.worker import GroupRequest, RolloutWorker

pytestmark = pytest.mark.component

# G2RPO advances the anchor, the G branches at each k in M and all granular ODE tails in one batched call
# per step: up to 16 rows here, 32 with CFG (193 in the FLUX preset).
G2RPO = ALGORITHMS["g2rpo"](steps=[0, 1, 2], granularities=[1, 2]), SamplingConfig(group_size=3, num_steps=4)


def _rollout(path: str, case: tuple, **chunks):
    (algorithm, sampling), model = case, ModelConfig(path=path, guidance_scale=2.0, lora=LoraSettings(rank=4, alpha=8))
    worker = RolloutWorker(model, sampling, algorithm=algorithm, torch_threads=2, **chunks)
    calls = {"rows": [], "images": []}
    worker.policy.transformer.register_forward_pre_hook(
        lambda _m, _a, kw: calls["rows"].append(kw["hidden_states"].shape[0]), with_kwargs=True)
    decode = worker.policy.pipe.vae.decode
    worker.policy.pipe.vae.decode = lambda z, **kw: (calls["images"].append(z.shape[0]), decode(z, **kw))[1]
    result = worker.rollout([GroupRequest(0, "a photo of a red circle", {}, seed=3, iteration=0)])[0]
    return result, calls


def test_chunked_g2rpo_rollout_matches_the_unchunked_one(tiny_sd3_path):
    whole, whole_calls = _rollout(tiny_sd3_path, G2RPO)
    chunked, calls = _rollout(tiny_sd3_path, G2RPO, rows_per_forward=3, images_per_decode=4)
    assert max(whole_calls["rows"]) == 32 and max(calls["rows"]) <= 3 and sum(calls["rows"]) == sum(whole_calls["rows"])
    assert whole_calls["images"] == [18] and calls["images"] == [4, 4, 4, 4, 2]  # G * |M| * |Lambda| images
    a, b = whole.rollout, chunked.rollout
    assert a.transitions.log_prob.shape == b.transitions.log_prob.shape
    torch.testing.assert_close(a.final_latents, b.final_latents, rtol=0, atol=1e-4)
    torch.testing.assert_close(a.transitions.log_prob, b.transitions.log_prob, rtol=0, atol=1e-4)
    assert abs(whole.images.astype(int) - chunked.images.astype(int)).max() <= 1  # uint8 rounding at most
