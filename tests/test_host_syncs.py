"""Hot loops read nothing back from the device (issue 32, item 5), checked without a GPU.

On a GPU every `.item()`, `bool(tensor)`, `float(tensor)` or `.tolist()` makes the host wait for the
device's queue. Two CUDA-free stand-ins: tensors on the `meta` device, which have no values, so any read
raises; and counting those calls made from flowray's own code while a loop runs.
"""

from __future__ import annotations

import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from algorithms import ALGORITHMS
from algorithms.losses import Diagnostics, DiagnosticSums, grpo_clip_loss, nft_loss
from models.config import SamplingConfig
from models.sampling import CountingVelocity, Recorder, eval_sample, integrate
from models.schedule import sd3_sigmas
from models.sde import dpm_solver_2m_step, ode_step, sde_step

META = torch.device("meta")
REPO = Path(__file__).resolve().parents[1]
READS = ("item", "__bool__", "__float__", "__int__", "tolist", "numpy")


@contextmanager
def counting_reads(monkeypatch):
    """Count host reads of tensors (READS) whose caller is flowray's code, not a library's; `on` switches
    the counting on around the code under test."""
    counts: Counter = Counter()
    state = {"on": False}

    def wrap(name, original):
        def counted(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if (
                state["on"]
                and caller.startswith(str(REPO))
                and "/.venv/" not in caller
                and "/tests/" not in caller
            ):
                counts[f"{Path(caller).relative_to(REPO)}: {name}"] += 1
            return original(self, *args, **kwargs)

        return counted

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name)))
    yield counts, state


# ----------------------------------------------------------------------------- the step math


@pytest.mark.unit
def test_sde_steps_read_nothing_from_the_device():
    """Steps with Python sigmas (the samplers') or [B] sigma tensors on the device (the learner's) run
    without reading a value: on meta tensors, any read would raise."""
    x, v, noise = (torch.randn(3, 4, 2, 2, device=META) for _ in range(3))
    for kind in ("flow_grpo", "dance", "cps"):
        out = sde_step(v, x, 0.7, 0.5, noise_level=0.7, kind=kind, noise=noise)
        assert out.prev_sample.device == META and out.log_prob.shape == (3,)
        sigma, sigma_next = torch.full((3,), 0.7, device=META), torch.full((3,), 0.5, device=META)
        again = sde_step(v, x, sigma, sigma_next, noise_level=0.7, kind=kind, prev_sample=out.prev_sample)
        assert again.log_prob.device == META
    assert ode_step(v, x, 1.0, 0.8).device == META
    x_next, x0 = dpm_solver_2m_step(v, x, 0.6, 0.4, prev_x0=x, sigma_prev=0.8)
    assert x_next.device == x0.device == META


@pytest.mark.unit
def test_trajectories_read_nothing_from_the_device():
    """`integrate` (every strategy's loop, SDE steps recorded) and the evaluation sampler on meta latents."""
    sigmas = sd3_sigmas(4, 3.0)
    cfg = SamplingConfig(group_size=3, num_steps=4)
    velocity = CountingVelocity(lambda x, sigma: torch.empty_like(x))
    recorder = Recorder()
    x = torch.empty(3, 4, 2, 2, device=META)
    modes = ["sde", "sde", "dpm", "ode"]
    final = integrate(velocity, x, sigmas, modes, {0: [0, 1, 2], 1: [1]}, recorder, cfg, torch.Generator())
    assert final.device == META and velocity.calls == 4
    assert recorder.build(final).next_latents.shape == (4, 4, 2, 2)
    images = eval_sample(
        lambda x, sigma: torch.empty_like(x),
        lambda n, g: torch.empty(n, 4, 2, 2, device=META),
        sigmas,
        seeds=[1, 2],
    )
    assert images.device == META


@pytest.mark.unit
def test_debug_checks_read_device_values_when_asked(monkeypatch):
    """FLOWRAY_DEBUG_CHECKS=1 runs the value checks on every device (here: they try to read meta values)."""
    x = torch.randn(2, 3, device=META)
    monkeypatch.setenv("FLOWRAY_DEBUG_CHECKS", "1")
    with pytest.raises(RuntimeError, match="meta"):
        ode_step(x, x, 0.5, 0.3)
    monkeypatch.setenv("FLOWRAY_DEBUG_CHECKS", "yes")
    with pytest.raises(ValueError, match="FLOWRAY_DEBUG_CHECKS must be 1"):
        ode_step(x, x, 0.5, 0.3)


# ----------------------------------------------------------------------------- the losses' diagnostics


@pytest.mark.unit
def test_loss_diagnostics_stay_tensors_until_read():
    n = 6
    log_prob, old, adv, kl = (torch.randn(n, device=META) for _ in range(4))
    sigma = torch.rand(n)  # the per-step plan passes the micro-batch's sigmas from the host
    loss, diag = grpo_clip_loss(log_prob, old, adv, clip_range=1e-3, kl=kl, beta=0.1, sigma=sigma)
    assert isinstance(diag, Diagnostics) and loss.device == META
    assert diag.scalars and all(t.device == META and t.ndim == 0 for t in diag.scalars.values())
    assert set(diag.binned) == {"policy/loss", "policy/kl"}

    v, v_old, target = (torch.randn(n, 2, 2, 2, device=META) for _ in range(3))
    adv = torch.randn(n, device=META)
    sig = torch.rand(n, device=META)
    _, nft = nft_loss(v, v_old, target, sig, adv, beta=1.0, adv_clip=5.0, v_ref=v_old, kl_beta=0.1)
    assert all(t.device == META for t in nft.scalars.values()) and set(nft.binned) == {
        "policy/loss",
        "policy/kl",
    }
    from learner.config import LearnerConfig

    _, awm = ALGORITHMS["awm"]().loss(v, v_old, target, sig, adv.double(), learner=LearnerConfig(beta=0.0))
    assert all(t.device == META for t in awm.scalars.values())


@pytest.mark.unit
def test_diagnostic_sums_read_once_and_equal_the_per_micro_batch_floats(monkeypatch):
    """The iteration's means are those of the loop that read every micro-batch to floats, bit for bit
    (an empty sigma bin counts for nothing), and the tensors reach the host in one transfer."""
    import algorithms.losses as losses

    rows = [5, 3, 7]

    def micro_batch_diagnostics() -> list[Diagnostics]:
        gen, out = torch.Generator().manual_seed(0), []
        for n, lo in zip(rows, (0.0, 0.5, 0.1), strict=True):
            old = torch.randn(n, generator=gen)
            logp = old + 1e-3 * torch.randn(n, generator=gen)
            sigma = lo + 0.3 * torch.rand(n, generator=gen)  # the micro-batches cover different sigma bins
            out.append(
                grpo_clip_loss(
                    logp,
                    old,
                    torch.randn(n, generator=gen),
                    clip_range=1e-3,
                    kl=torch.rand(n, generator=gen),
                    beta=0.1,
                    sigma=sigma,
                )[1]
            )
        return out

    sums, counts = Counter(), Counter()
    for diag, n in zip(micro_batch_diagnostics(), rows, strict=True):
        for k, v in diag.items():  # the loop before: each micro-batch read to floats
            sums[k] += v * n
            counts[k] += n
    expected = {k: sums[k] / counts[k] for k in sums}

    transfers = []
    monkeypatch.setattr(losses, "to_host", lambda ts, f=losses.to_host: transfers.append(len(ts)) or f(ts))
    kept = DiagnosticSums()
    for diag, n in zip(micro_batch_diagnostics(), rows, strict=True):
        kept.add(diag, n)
    assert kept.means() == expected
    assert len(transfers) == 1
    assert "policy/kl/sigma_0.8-1.0" not in expected and counts["policy/loss/sigma_0.6-0.8"] == 3


# ----------------------------------------------------------------------------- the learner's loop


@pytest.mark.component
def test_the_learners_micro_batch_loop_reads_no_diagnostic(tiny_sd3_path, monkeypatch):
    """LearnerWorker.train as on an accelerator (FLOWRAY_DEBUG_CHECKS=0: the value checks off): no host read
    from flowray's code while a micro-batch's loss is computed and its diagnostics kept; the iteration's
    metrics are still floats."""
    from learner.advantages import grpo_advantages
    from learner.config import LearnerConfig
    from learner.engine import free_port
    from learner.worker import LearnerWorker, TrainGroup
    from models.config import LoraSettings, ModelConfig
    from rollout.worker import GroupRequest, RolloutWorker

    model = ModelConfig(
        path=tiny_sd3_path, resolution=32, guidance_scale=2.0, lora=LoraSettings(rank=4, alpha=8)
    )
    sampling = SamplingConfig(group_size=4, num_steps=4, eval_num_steps=6)
    learner_cfg = LearnerConfig(micro_batch_size=5, learning_rate=1e-2, beta=0.01)
    rollout = RolloutWorker(model, sampling, torch_threads=2)
    learner = LearnerWorker(model, sampling, learner_cfg, rank=0, world_size=1, seed=0)
    learner.setup("127.0.0.1", free_port())
    groups = []
    for res in rollout.rollout([GroupRequest(0, "a photo of a red circle", {}, seed=3, iteration=0)]):
        r = res.rollout
        rewards = torch.from_numpy(res.images.reshape(len(res.images), -1).mean(1).astype(np.float32))
        adv = grpo_advantages(rewards, r.reward_group, r.image_sample_id, r.num_samples)
        groups.append(TrainGroup(res.request.prompt, r, adv, torch.ones(r.num_samples, dtype=torch.bool), 0))

    monkeypatch.setenv("FLOWRAY_DEBUG_CHECKS", "0")
    with counting_reads(monkeypatch) as (counts, state):

        def counted(fn):
            def run(*args, **kwargs):
                state["on"] = True
                try:
                    return fn(*args, **kwargs)
                finally:
                    state["on"] = False

            return run

        monkeypatch.setattr(learner.plan, "loss", counted(learner.plan.loss))
        monkeypatch.setattr(DiagnosticSums, "add", counted(DiagnosticSums.add))
        metrics = learner.train(groups, iteration=0)
    assert not counts, f"host reads in the micro-batch loop: {dict(counts)}"
    assert isinstance(metrics["policy/ratio_mean"], float) and abs(metrics["policy/ratio_mean"] - 1.0) < 1e-5
    assert metrics["learner/first_minibatch_clipfrac"] == 0.0


# ----------------------------------------------------------------------------- the GenEval detector


def _detections(k: int):
    """Mask2Former outputs with `k` confident queries, each its own square, and 4 queries of 'no object'."""
    q, c = k + 4, 3
    class_logits = torch.full((q, c + 1), -10.0)
    class_logits[:k, 1] = 10.0
    class_logits[k:, c] = 10.0
    masks = torch.full((q, 8 * q, 8), -5.0)
    for i in range(k):
        masks[i, 8 * i : 8 * i + 4, 2:6] = 4.0
    return class_logits, masks


@pytest.mark.unit
def test_decode_instances_reads_the_host_a_fixed_number_of_times(monkeypatch):
    from rewards.geneval import decode_instances

    reads = []
    for k in (1, 9):
        with counting_reads(monkeypatch) as (counts, state):
            state["on"] = True
            found = decode_instances(*_detections(k), ["cat", "dog", "cow"], min_score=0.3)
            state["on"] = False
        assert len(found) == k and all(d.label == "dog" for d in found)
        reads.append(sum(counts.values()))
    assert reads[0] == reads[1], f"host reads grow with the detections: {reads}"
