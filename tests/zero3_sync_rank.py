"""One of two ZeRO-3 learner ranks for tests/test_weight_buckets.py, in a spawned process (kept apart
from the test module so the child imports only the learner)."""

from __future__ import annotations


def export_in_small_buckets(rank: int, port: int, path: str, out: dict) -> None:
    """One of two ZeRO-3 learner ranks (gloo, in a spawned process): exports the sampling weights in
    small buckets, recording the bytes of gathered parameters at every pack."""
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    import learner.engine as le
    import learner.worker as lw
    from learner.config import LearnerConfig
    from learner.worker import LearnerWorker
    from models.config import LoraSettings, ModelConfig, SamplingConfig

    ds_config = le.deepspeed_config

    def partition_everything(*args, **kwargs):  # the tiny model's tensors are all under ZeRO-3's persistence threshold
        cfg = ds_config(*args, **kwargs)
        cfg["zero_optimization"]["stage3_param_persistence_threshold"] = 0
        return cfg

    le.deepspeed_config = partition_everything
    model = ModelConfig(path=path, dtype="bfloat16", guidance_scale=2.0, lora=LoraSettings(enabled=False))
    learner = LearnerWorker(model, SamplingConfig(group_size=4, num_steps=3), LearnerConfig(
        precision="bf16", zero_stage=3, micro_batch_size=4), rank=rank, world_size=2, seed=0)
    learner.setup("127.0.0.1", port)
    params = list(learner.policy.transformer.parameters())
    gathered_bytes, packing = [], lw.pack

    def pack(spec, tensors, device="cpu"):
        gathered_bytes.append(sum(p.ds_numel * p.element_size() for p in params if p.ds_status == ZeroParamStatus.AVAILABLE))
        return packing(spec, tensors, device)

    lw.pack = pack
    learner.sync_bucket_bytes = 8 << 10
    buckets, digest = learner.export_sampling_buckets()
    full = learner.export_weights()  # every rank gathers; rank 0 keeps the whole model
    out[rank] = {"buckets": buckets, "digest": digest, "gathered": gathered_bytes, "full": full,
                 "largest": max((b.spec.nbytes for b in buckets), default=0)}
