"""Weight sync in buckets (common/weight_buckets.py): the weights travel in their own dtype (bf16
stays bf16 in the object store and on the wire), a corrupted or mismatched bucket is caught naming it,
the collective backend exports nothing to the object store, and under ZeRO-3 every learner rank gathers
one bucket at a time, so no rank holds more than a bucket beyond its shard."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import ray
import torch

from common.collective import SyncGroup
from common.weight_buckets import (
    PackedBucket,
    WeightIntegrityError,
    checksum,
    load_packed,
    pack,
    plan_buckets,
    plan_for,
    unpack_into,
    weights_digest,
)
from learner.engine import free_port
from tests.test_bf16 import _workers
from tests.test_system import _config, _digest

pytestmark = pytest.mark.component


def test_plan_packs_same_dtype_buckets_under_the_limit_and_round_trips():
    live = {"a": torch.randn(10), "b": torch.randn(3, 4).bfloat16(), "c": torch.randn(300), "d": torch.randn(5)}
    specs = plan_for(live, bucket_bytes=1024)
    assert [s.names for s in specs] == [("a",), ("b",), ("c",), ("d",)]  # dtype change, then c alone (1200 B)
    assert [s.names for s in plan_for({k: live[k] for k in "ad"}, bucket_bytes=1024)] == [("a", "d")]
    target = {k: torch.zeros_like(v) for k, v in live.items()}
    for spec in specs:
        unpack_into(spec, pack(spec, live), target)
    assert all(torch.equal(target[k], live[k]) and target[k].dtype == live[k].dtype for k in live)


def test_checksum_sees_a_changed_word_and_moved_chunks():
    flat = torch.randn(3 * 4096 * 2 + 7)  # three 32 KB chunks and an odd tail
    base = checksum(flat)
    flipped = flat.clone()
    flipped.view(torch.int32)[5000] ^= 1
    assert checksum(flipped) != base
    swapped = flat.clone()
    a, b = swapped[: 4096 * 2].clone(), swapped[4096 * 2 : 4096 * 4].clone()
    swapped[: 4096 * 2], swapped[4096 * 2 : 4096 * 4] = b, a
    assert checksum(swapped)[0] == base[0] and checksum(swapped) != base  # the plain sum cannot tell


def test_a_corrupted_bucket_is_refused_naming_it():
    live = {"blocks.0.w": torch.randn(8, 8).bfloat16(), "blocks.1.w": torch.randn(8, 8).bfloat16()}
    (spec,) = plan_for(live)
    flat = pack(spec, live)
    sent = checksum(flat)
    data = flat.view(torch.uint8).numpy().copy()
    data[17] ^= 0x40  # one bit flipped in transit
    target = {k: torch.zeros_like(v) for k, v in live.items()}
    with pytest.raises(WeightIntegrityError, match=r"bucket 0 \(2 tensors, torch.bfloat16: blocks.0.w .. blocks.1.w\)"):
        load_packed([PackedBucket(spec, data, sent)], target)
    assert all(not t.any() for t in target.values())  # nothing of the bad bucket was loaded
    other = {"blocks.0.w": torch.zeros(8, 8), "blocks.1.w": torch.zeros(8, 8)}  # fp32 here: another precision
    with pytest.raises(WeightIntegrityError, match=r"blocks.0.w sent as \(8, 8\) torch.bfloat16, held here as \(8, 8\) torch.float32"):
        load_packed([PackedBucket(spec, flat.view(torch.uint8).numpy(), sent)], other)


def test_collective_receiver_refuses_a_corrupted_bucket():
    live = {"w": torch.randn(64).bfloat16()}
    (spec,) = plan_buckets({"w": ((64,), torch.bfloat16)})
    port, peer, errors = free_port(), {}, []

    def receive():
        peer["group"] = group = SyncGroup("127.0.0.1", port, 1, 2, torch.device("cpu"))
        try:
            group.receive_plan([spec])
            group.receive_bucket(spec)
        except WeightIntegrityError as err:
            errors.append(str(err))

    t = threading.Thread(target=receive)
    t.start()
    sender = SyncGroup("127.0.0.1", port, 0, 2, torch.device("cpu"))
    flat = pack(spec, live)
    good = checksum(flat)
    sender.send_plan([spec])
    sender._broadcast(torch.tensor([spec.layout_hash(), good[0] + 1, good[1]], dtype=torch.int64))  # a bad header
    sender._broadcast(flat)
    t.join()
    sender.close()
    peer["group"].close()
    assert errors and "bucket 0 (1 tensors, torch.bfloat16: w) arrived corrupted" in errors[0]


def test_bf16_object_store_buckets_stay_bf16_and_load_bit_exactly(tiny_sd3_path):
    rollout, learner = _workers(tiny_sd3_path, lora=False, beta=0.0)
    buckets, digest = learner.export_sampling_buckets()
    live = learner.policy.trainable_tensors()
    assert torch.bfloat16 in {b.spec.dtype for b in buckets}
    assert all(live[n].dtype == b.spec.dtype for b in buckets for n in b.spec.names)  # each tensor in its own dtype
    assert sum(b.data.nbytes for b in buckets) == sum(t.numel() * t.element_size() for t in live.values())
    ack = rollout.load_buckets(buckets, 3)
    assert ack == {"actor": rollout.name, "version": 3, "digest": digest}
    assert weights_digest(rollout.weights()) == learner.weights_digest()


@pytest.fixture(scope="module")
def ray_with_store_objects():
    """A private local Ray in which every object above 1 KB goes to the shared-memory object store (by
    default Ray inlines results under 100 KB, and the tiny model's weights are smaller than that)."""
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
             _system_config={"max_direct_call_object_size": 1024})
    yield
    ray.shutdown()


def test_collective_sync_puts_no_weights_in_the_object_store(ray_with_store_objects, tiny_sd3_path, tmp_path):
    from benchmarks.data_plane import store_created_bytes
    from cluster.trainer import Trainer

    cfg = _config(tiny_sd3_path, tmp_path, **{"cluster.num_learner_ranks": 1, "learner.zero_stage": 0,
                                               "cluster.sync_backend": "collective", "model.lora.enabled": "false"})
    with Trainer(cfg) as trainer:
        weight_bytes = sum(np.asarray(v).nbytes for v in ray.get(trainer.rollouts[0].weights.remote()).values())
        before = store_created_bytes()
        trainer.sync_weights.sync(1)
        synced = store_created_bytes() - before
        assert _digest(trainer.rollouts[0]) == _digest(trainer.learners[0], "export_sampling_weights")
        before = store_created_bytes()
        trainer.sync_weights.resend(trainer.rollouts[0], restarted=False)  # a resend exports, once, on demand
        resent = store_created_bytes() - before
    assert resent >= weight_bytes, (resent, weight_bytes)  # the counter sees an export of the weights
    assert synced < weight_bytes / 10, f"the collective sync created {synced} bytes in the object store"


def test_zero3_two_ranks_gather_bucket_by_bucket_and_actors_get_rank0s_weights(tiny_sd3_path):
    import torch.multiprocessing as mp

    from models.config import LoraSettings, ModelConfig, SamplingConfig
    from rollout.worker import RolloutWorker
    from tests.zero3_sync_rank import export_in_small_buckets

    port = free_port()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(export_in_small_buckets, args=(port, tiny_sd3_path, out), nprocs=2, start_method="spawn")
        zero, one = out[0], out[1]
    assert one["buckets"] == [] and one["digest"] == "" and one["full"] == {}
    assert len(zero["buckets"]) > 5  # the model spans many 8 KB buckets
    bound = 8 << 10
    assert max(zero["gathered"]) <= max(bound, zero["largest"]), "a rank held more than one bucket gathered"
    rollout = RolloutWorker(ModelConfig(path=tiny_sd3_path, dtype="bfloat16", guidance_scale=2.0,
                                        lora=LoraSettings(enabled=False)), SamplingConfig(), precision="bf16")
    assert rollout.load_buckets(zero["buckets"], 1)["digest"] == zero["digest"]
    full = {k: torch.from_numpy(v) for k, v in zero["full"].items()}
    assert weights_digest(rollout.weights()) == weights_digest(full)
