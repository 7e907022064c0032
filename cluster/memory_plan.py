"""The memory planner: what each actor kind holds, estimated from the model's architecture before launch.

`launch.py --dry-run` prints `plan_memory(cfg, ...)` per actor kind and refuses a plan that cannot fit
`cluster.gpu_memory_gb`. Everything here is arithmetic over numbers read from config files and
safetensors headers (no weights are loaded, no Ray, no torch), in bytes; GB = 1e9 bytes.

What each actor kind holds (read from the code, not assumed):
- rollout actor (rollout/worker.py): the whole pipeline in `model.dtype` (transformer, text encoders,
  VAE) plus LoRA adapters in the learner's precision; its prompt cache (models/policy.py `_PromptCache`,
  training and test prompts); the group's trajectory latents (fp32); the peak of one transformer call
  (`cluster.rollout_rows_per_forward` rows, inference) or one VAE decode (`cluster.rollout_images_per_decode`
  images), whichever is larger.
- learner rank (learner/worker.py): the transformer only (Policy.from_config(transformer_only=True): no text
  encoders, no VAE), a frozen reference copy of a fully fine-tuned transformer when `learner.beta > 0`,
  DeepSpeed's optimizer state and gradients (ZeRO closed forms below), the prompt embeddings that come with
  its share of the iteration's groups (common/data_plane.py; host memory) and the saved activations of one
  micro-batch.
- hybrid worker (cluster.layout=hybrid: a learner rank that samples with its live weights): the learner rank's
  terms, the text encoders and VAE, the prompt cache, its groups' trajectory latents, and the larger of the
  sampling and the training transients (they run one after the other); `plan_hybrid`.
- reward actor (rewards/): its scorer's weights (float32 unless the scorer's `dtype` option says otherwise)
  and the activations of one request.

Activations are an estimate: tokens x hidden x layers x a per-element factor. The factors were measured on
CPU against peak RSS of the real-width, reduced-depth models (benchmarks/memory_plan.py; docs/benchmarks.md has the
numbers): treat the activation terms as +-25%, the weight and optimizer terms as exact up to allocator slack.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from cluster.model_specs import PipelineSpec, RewardSpec, image_tokens, lora_params, text_tokens
from models.config import PROMPT_CACHE_SIZE
from models.families import family_of

GB = 1e9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

# Elements saved per token, per hidden unit, per block for the backward pass. Korthikanti et al. 2022
# ("Reducing Activation Recomputation in Large Transformer Models", Eq. 1) count 34 bytes = 17 16-bit
# elements per token per hidden unit per GPT layer, plus 5 a s / h for the attention scores, which fused
# (flash / memory-efficient) attention does not keep. An SD3.5 MMDiT block (two streams, adaLN, dual
# attention) measured ~20 on CPU (benchmarks/memory_plan.py: 19.5 without checkpointing, ~23 with it).
TRAIN_ELEMENTS_PER_TOKEN_HIDDEN = 20.0
# Elements alive at once per token per hidden unit inside one block at inference (hidden, q/k/v, MLP 4h).
INFERENCE_ELEMENTS_PER_TOKEN_HIDDEN = 8.0
# Elements alive at once per output pixel per full-resolution channel of the VAE decoder (input, GroupNorm,
# SiLU and conv outputs of a ResNet block at full resolution).
DECODE_ELEMENTS_PER_PIXEL_CHANNEL = 4.0
# Per GPU process: CUDA context, cuBLAS/cuDNN workspaces and allocator slack (an assumption, not measured
# here: there is no GPU on the machine that calibrated the rest).
GPU_RUNTIME_BYTES = 1.5 * GB


# ----------------------------------------------------------------------------- closed forms


def weights_bytes(params: int, dtype_bytes: int) -> float:
    return float(params * dtype_bytes)


def optimizer_bytes(trainable: int, ranks: int, zero_stage: int, precision: str) -> dict[str, float]:
    """Adam's two fp32 moments, plus DeepSpeed's fp32 master weights when the weights are bf16/fp16; ZeRO
    stages >= 1 partition both over the data-parallel ranks (Rajbhandari et al. 2020, ZeRO, Sec. 5.1)."""
    shard = ranks if zero_stage >= 1 else 1
    master = 4 * trainable if precision != "fp32" else 0
    return {"adam moments (fp32)": 8 * trainable / shard, "master weights (fp32)": master / shard}


def gradient_bytes(trainable: int, ranks: int, zero_stage: int, precision: str, bucket: int) -> float:
    """Gradients accumulate in fp32 (learner/engine.py `grad_accum_dtype`). ZeRO-0/1 keep them whole, with
    bf16/fp16 weights beside the parameters' own half-precision .grad; ZeRO-2/3 keep a 1 / ranks fp32
    partition plus the parameters' gradients waiting in the reduce bucket (`bucket` elements:
    learner.zero_bucket_elements, in the weights' dtype)."""
    half = PRECISION_BYTES[precision] * trainable if precision != "fp32" else 0
    if zero_stage >= 2:
        return 4 * trainable / ranks + PRECISION_BYTES[precision] * min(trainable, bucket)
    return float(4 * trainable + half)


def gradient_reduce_bytes(trainable: int, ranks: int, zero_stage: int, bucket: int) -> float:
    """What reducing one full bucket allocates on top, with fp32 communication (learner/engine.py): ZeRO-2
    casts the bucket to fp32 for its all-reduce (stage_1_and_2.py `gradient_reduction_w_predivide`); ZeRO-3
    casts each gradient to fp32 and concatenates the casts into one flat buffer for the reduce-scatter
    (stage3.py `__avg_scatter_grads`, comm/coalesced_collectives.py `reduce_scatter_coalesced`): two
    fp32 copies. Nothing to reduce on one rank."""
    if ranks == 1 or zero_stage < 2:
        return 0.0
    return (8.0 if zero_stage == 3 else 4.0) * min(trainable, bucket)


def optimizer_step_bytes(trainable: int, ranks: int, zero_stage: int, fused: bool, bucket: int) -> float:
    """What one optimizer step allocates on top: ZeRO-2 flattens the gradient partition into a new fp32
    tensor (deepspeed/runtime/zero/stage_1_and_2.py `step`), and torch's unfused AdamW (CPU; the fused CUDA
    kernel does not) materialises sqrt(v) + eps for what it steps at once: the whole partition, or under
    ZeRO-3 one sub-group of `bucket` elements (learner.zero_bucket_elements)."""
    shard = ranks if zero_stage >= 1 else 1
    stepped = min(trainable / shard, bucket) if zero_stage == 3 else trainable / shard
    return (4 * trainable / ranks if zero_stage == 2 else 0) + (0 if fused else 4 * stepped)


def train_activation_bytes(spec: PipelineSpec, tokens: int, rows: int, act_bytes: int, checkpointing: bool) -> float:
    """Saved activations of one forward/backward over `rows` rows of `tokens` tokens. Without checkpointing
    every block keeps its factor x tokens x hidden; with it (diffusers checkpoints each block) each block
    keeps its input and one block at a time is recomputed in full."""
    factor = family_of(spec.family).train_elements_per_token_hidden or TRAIN_ELEMENTS_PER_TOKEN_HIDDEN
    per_block = factor * tokens * spec.hidden * act_bytes * rows
    if not checkpointing:
        return spec.layers * per_block
    return spec.layers * tokens * spec.hidden * act_bytes * rows + per_block


def inference_activation_bytes(spec: PipelineSpec, tokens: int, rows: int, act_bytes: int) -> float:
    """The live tensors of one block at inference (no_grad frees each block's outputs)."""
    factor = family_of(spec.family).inference_elements_per_token_hidden or INFERENCE_ELEMENTS_PER_TOKEN_HIDDEN
    return factor * tokens * spec.hidden * act_bytes * rows


def decode_bytes(spec: PipelineSpec, resolution: int, images: int, act_bytes: int) -> float:
    """The VAE decoder's full-resolution stage for a chunk of images (a family whose VAE is no AutoencoderKL
    brings its own measured factor: models/families.py `decode_elements_per_pixel_channel`)."""
    factor = family_of(spec.family).decode_elements_per_pixel_channel or DECODE_ELEMENTS_PER_PIXEL_CHANNEL
    return factor * resolution**2 * spec.vae_fullres_channels * act_bytes * images


def prompt_embedding_bytes(spec: PipelineSpec, max_sequence_length: int, rows: int, dtype_bytes: int) -> float:
    """`rows` prompt embeddings [text tokens, embed_dim] + pooled [pooled_dim]."""
    return float(rows * (text_tokens(spec, max_sequence_length) * spec.embed_dim + spec.pooled_dim) * dtype_bytes)


def prompt_cache_bytes(spec: PipelineSpec, max_sequence_length: int, prompts: int, dtype_bytes: int) -> float:
    """min(prompts, PROMPT_CACHE_SIZE) cached embeddings (models/policy.py `_PromptCache`)."""
    return prompt_embedding_bytes(spec, max_sequence_length, min(prompts, PROMPT_CACHE_SIZE), dtype_bytes)


def latent_bytes(spec: PipelineSpec, resolution: int, frames: int = 1) -> int:
    """One fp32 latent [C, res / scale, res / scale] (a video family's: [C, latent frames, ...] for `frames`)."""
    return 4 * spec.latent_channels * (resolution // spec.vae_scale) ** 2 * family_of(spec.family).latent_frames(frames)


# ----------------------------------------------------------------------------- per actor kind


@dataclass(frozen=True)
class Term:
    """One named part of an actor's memory and the config keys that shrink it."""

    label: str
    bytes: float
    keys: tuple[str, ...] = ()
    host: bool = False  # held in host memory (numpy copies), not on the actor's GPU
    offloadable: bool = False  # moved out while its side is idle (cluster.colocate_offload, common/offload.py)


@dataclass
class ActorPlan:
    """The terms of one actor kind, and the GPU memory it may use (None: it runs on CPU, host memory)."""

    kind: str
    terms: list[Term]
    budget_bytes: float | None
    budget_keys: tuple[str, ...] = ()
    transients: list[Term] = field(default_factory=list)  # never at once: only the largest counts

    @property
    def peak_transient(self) -> Term | None:
        return max(self.transients, key=lambda t: t.bytes, default=None)

    @property
    def counted(self) -> list[Term]:
        """The terms the total adds: every resident one and the largest transient."""
        return self.terms + ([self.peak_transient] if self.transients else [])

    @property
    def total(self) -> float:
        """What the actor's device holds: every counted term on CPU, the non-host ones on a GPU."""
        return sum(t.bytes for t in self.counted if self.budget_bytes is None or not t.host)

    @property
    def host_total(self) -> float:
        return sum(t.bytes for t in self.counted if t.host)

    @property
    def fits(self) -> bool:
        return self.budget_bytes is None or self.total <= self.budget_bytes

    def lines(self) -> list[str]:
        where = "host memory (CPU actor)" if self.budget_bytes is None else f"of {self.budget_bytes / GB:.1f} GB GPU"
        host = f" (+ {self.host_total / GB:.2f} GB host memory)" if self.budget_bytes is not None and self.host_total else ""
        out = [f"memory {self.kind}: {self.total / GB:.2f} GB {where}{host}"]
        out += [f"    {t.bytes / GB:8.2f} GB  {t.label}" + (" (host memory)" if t.host else "")
                for t in self.terms if t.bytes > 0]
        return out + [f"    {t.bytes / GB:8.2f} GB  {t.label}" + ("" if t is self.peak_transient else " (not at once: not counted)")
                      for t in self.transients]

    def advice(self) -> str:
        """Why it does not fit and which keys to change, the largest terms' keys first."""
        keys: list[str] = []
        ranked = sorted((t for t in self.counted if not t.host), key=lambda t: -t.bytes)
        for term in ranked:
            keys += [k for k in term.keys if k not in keys]
        keys += [k for k in self.budget_keys if k not in keys]
        top = ", ".join(f"{t.label} {t.bytes / GB:.1f} GB" for t in ranked[:3])
        return (f"estimated {self.total / GB:.1f} GB does not fit {self.budget_bytes / GB:.1f} GB ({top}); "
                f"change {', '.join(keys)}")


def _cfg_factor(cfg) -> int:
    """Rows per sample in a transformer call: SD3's CFG doubles the batch unless guidance is 1."""
    return family_of(cfg.model.family).rows_per_sample(cfg.model.guidance_scale)


def rollout_rows_per_call(cfg) -> int:
    """Rows of the largest transformer call a rollout actor makes (after cluster.rollout_rows_per_forward)."""
    rows = cfg.algorithm.rollout_latents_per_call(cfg.sampling) * _cfg_factor(cfg)
    return min(rows, cfg.cluster.rollout_rows_per_forward or rows)


def learner_inputs_per_micro_batch(cfg) -> int:
    """Distinct latents one learner forward takes (one forward per distinct input; the algorithm says how
    many a micro-batch of its rows touches)."""
    return cfg.algorithm.learner_inputs_per_micro_batch(cfg.learner.micro_batch_size, cfg.sampling.group_size)


def images_per_group(cfg) -> int:
    return cfg.algorithm.images_per_group(cfg.sampling.group_size)


def _weight_terms(spec: PipelineSpec, dtype_bytes: int) -> list[Term]:
    terms = [Term("transformer weights", weights_bytes(spec.transformer_params, dtype_bytes), ("model.dtype",))]
    terms += [Term(f"{name} weights", weights_bytes(n, dtype_bytes), ("model.dtype",))
              for name, n in spec.text_encoder_params.items()]
    return terms + [Term("vae weights", weights_bytes(spec.vae_params, dtype_bytes), ("model.dtype",))]


def _trainable(cfg, spec: PipelineSpec) -> int:
    lora = cfg.model.lora
    return lora_params(spec, lora.target_modules, lora.rank) if lora.enabled else spec.transformer_params


def plan_rollout(cfg, spec: PipelineSpec, prompts: int) -> tuple[list[Term], list[Term]]:
    """A rollout actor's resident terms and its transients (a transformer call, a decode: never at once);
    `prompts`: distinct training + test prompts (+ the negative prompt)."""
    m, dtype_bytes = cfg.model, DTYPE_BYTES[cfg.model.dtype]
    terms = [replace(t, offloadable=True) for t in _weight_terms(spec, dtype_bytes)]  # RolloutWorker.offload: all
    if m.lora.enabled:
        terms.append(Term("LoRA adapters", weights_bytes(_trainable(cfg, spec), PRECISION_BYTES[cfg.learner.precision]),
                          ("model.lora.rank",), offloadable=True))
    return terms + _sampler_state(cfg, spec, prompts, groups=1), _sampler_transients(cfg, spec)


def _sampler_state(cfg, spec: PipelineSpec, prompts: int, groups: int) -> list[Term]:
    """What a sampler keeps besides its weights: the prompt cache and the trajectory latents of `groups`
    groups (a rollout actor ships each group as it finishes; a hybrid worker keeps its groups until its update)."""
    m = cfg.model
    kept = f"{groups} groups' trajectory latents (fp32, kept until the update)" if groups > 1 else "trajectory latents (fp32)"
    return [Term(f"prompt cache ({min(prompts, PROMPT_CACHE_SIZE)} prompts)",
                 prompt_cache_bytes(spec, m.max_sequence_length, prompts, DTYPE_BYTES[m.dtype])),
            Term(kept, groups * latent_bytes(spec, m.resolution, m.num_frames) * images_per_group(cfg) * (cfg.sampling.num_steps + 1))]


def _sampler_transients(cfg, spec: PipelineSpec) -> list[Term]:
    """The largest transformer call while sampling, and one VAE decode chunk (never at once)."""
    m, dtype_bytes = cfg.model, DTYPE_BYTES[cfg.model.dtype]
    tokens = image_tokens(spec, m.resolution, m.num_frames) + text_tokens(spec, m.max_sequence_length)
    rows = rollout_rows_per_call(cfg)
    chunk = min(images_per_group(cfg), cfg.cluster.rollout_images_per_decode or images_per_group(cfg))
    return [
        Term(f"transformer call ({rows} rows x {tokens} tokens, inference)",
             inference_activation_bytes(spec, tokens, rows, dtype_bytes), ("cluster.rollout_rows_per_forward",)),
        Term(f"VAE decode ({chunk} images at {m.resolution} px)", decode_bytes(spec, m.resolution, chunk, dtype_bytes),
             ("cluster.rollout_images_per_decode",)),
    ]


def plan_learner(cfg, spec: PipelineSpec) -> tuple[list[Term], list[Term]]:
    """A learner rank's resident terms and its transients (the backward's activations, the optimizer
    step: never at once), with the algorithm's own device copies (`learner_device_terms`)."""
    m, lc, ranks = cfg.model, cfg.learner, cfg.cluster.num_learner_ranks
    dtype_bytes = DTYPE_BYTES[m.dtype]
    # The transformer's weights only: prompts come encoded with the groups. LearnerWorker.offload keeps only
    # the trainable weights: a fully fine-tuned transformer stays.
    terms = [replace(t, offloadable=m.lora.enabled) for t in _weight_terms(spec, dtype_bytes)[:1]]
    if lc.zero_stage == 3:  # the module's parameters are partitioned too; one block is gathered at a time
        full = terms[0].bytes
        terms[0] = Term("transformer weights (ZeRO-3 partition + one gathered block)",
                        full / ranks + full / spec.layers, ("learner.zero_stage", "cluster.num_learner_ranks"))
    trainable = _trainable(cfg, spec)
    zero_keys = ("learner.zero_stage", "cluster.num_learner_ranks", "model.lora.enabled")
    if m.lora.enabled:
        terms.append(Term("LoRA adapters", weights_bytes(trainable, PRECISION_BYTES[lc.precision]), ("model.lora.rank",)))
    elif lc.beta > 0:
        terms.append(Term("reference copy of the transformer (full fine-tuning, beta > 0)",
                          weights_bytes(spec.transformer_params, dtype_bytes), ("learner.beta", "model.lora.enabled"),
                          offloadable=True))
    terms += [Term(label, b, zero_keys, offloadable=True)
              for label, b in optimizer_bytes(trainable, ranks, lc.zero_stage, lc.precision).items()]
    bucket_keys = (*zero_keys, "learner.zero_bucket_elements")
    terms.append(Term("gradients", gradient_bytes(trainable, ranks, lc.zero_stage, lc.precision, lc.zero_bucket_elements),
                      bucket_keys, offloadable=True))
    # float32 numpy copies of the trainable weights: the evaluation EMA (learner/worker.py EmaWeights), and
    # what the algorithm keeps beside them (the forward-process family's sampling policy).
    if lc.ema_decay is not None:
        terms.append(Term("EMA of the trainable weights (fp32)", 4.0 * trainable, ("learner.ema_decay",), host=True))
    terms += [Term(label, size, keys) for label, size, keys in cfg.algorithm.learner_device_terms(trainable)]
    # A group's payload carries one row of its prompt's embeddings and, under true CFG, one of the negative
    # prompt's (Policy.conditioning); they stay on the host until a micro-batch moves its rows.
    groups = -(-cfg.prompts_per_iteration // ranks)
    shipped = groups * family_of(m.family).shipped_embedding_rows()
    terms.append(Term(f"prompt embeddings of {groups} groups ({shipped} rows, shipped with them)",
                      prompt_embedding_bytes(spec, m.max_sequence_length, shipped, dtype_bytes),
                      ("data.images_per_iteration", "cluster.num_learner_ranks"), host=True))
    tokens = image_tokens(spec, m.resolution, m.num_frames) + text_tokens(spec, m.max_sequence_length)
    rows = learner_inputs_per_micro_batch(cfg) * _cfg_factor(cfg)
    ckpt = "with" if m.gradient_checkpointing else "without"
    fused = cfg.cluster.learner_num_gpus > 0  # learner/engine.py build_optimizer: fused AdamW on CUDA
    transients = [
        Term(f"activations ({rows} rows x {tokens} tokens, {ckpt} gradient checkpointing)",
             train_activation_bytes(spec, tokens, rows, dtype_bytes, m.gradient_checkpointing),
             ("learner.micro_batch_size", "model.gradient_checkpointing")),
        Term("optimizer step (flattened gradients" + ("" if fused else ", unfused AdamW temporaries") + ")",
             optimizer_step_bytes(trainable, ranks, lc.zero_stage, fused, lc.zero_bucket_elements), bucket_keys),
    ]
    reduce = gradient_reduce_bytes(trainable, ranks, lc.zero_stage, lc.zero_bucket_elements)
    if reduce:
        transients.append(Term("gradient reduce (fp32 copies of one bucket)", reduce, bucket_keys))
    return terms, transients


def plan_hybrid(cfg, spec: PipelineSpec, prompts: int) -> tuple[list[Term], list[Term]]:
    """A hybrid worker (cluster.layout=hybrid): a learner rank that also samples with its live weights. Its
    terms are the learner rank's (the transformer once, inside the DeepSpeed engine; LoRA adapters, the
    reference copy, optimizer state, gradients) plus what only the sampler holds: the text encoders and the
    VAE, the prompt cache and the trajectory latents of its groups (kept until its update). The algorithm's
    extra copy (the forward-process family's fp32 sampling policy) lives on the device, where sampling
    swaps it in. Sampling and training run one after the other, so the transients of both are one list:
    only the largest counts."""
    learner, learner_transients = plan_learner(cfg, spec)
    dtype_bytes = DTYPE_BYTES[cfg.model.dtype]
    groups = -(-cfg.prompts_per_iteration // cfg.cluster.num_learner_ranks)
    sampler = _weight_terms(spec, dtype_bytes)[1:] + _sampler_state(cfg, spec, prompts, groups)
    sampling = [replace(t, label=f"sampling: {t.label}") for t in _sampler_transients(cfg, spec)]
    training = [replace(t, label=f"training: {t.label}") for t in learner_transients]
    return learner + sampler, sampling + training


def plan_reward(scorer, spec: RewardSpec, index: int) -> list[Term]:
    """A reward actor of `rewards.scorers[index]`: its weights and one request's live activations."""
    dtype_bytes = DTYPE_BYTES[scorer.options.get("dtype", "float32")]
    per = scorer.batch_size_per_request
    return [Term(f"{scorer.name} weights", weights_bytes(spec.params, dtype_bytes), (f"rewards.scorers[{index}].options.dtype",)),
            Term(f"activations ({per} images per request)", INFERENCE_ELEMENTS_PER_TOKEN_HIDDEN * spec.elements_per_image
                 * dtype_bytes * per, (f"rewards.scorers[{index}].batch_size_per_request",))]


def plan_memory(cfg, spec: PipelineSpec, reward_specs: list[RewardSpec], *, train_prompts: int,
                test_prompts: int) -> list[ActorPlan]:
    """One ActorPlan per actor kind: 'rollout actor', 'learner rank', 'reward actor <name>'. A GPU actor's
    budget is its GPU share x cluster.gpu_memory_gb less the CUDA runtime; colocated rollout actors share
    their learner rank's bundle, so that bundle's plan holds both. cluster.layout=hybrid plans one 'hybrid
    worker' per learner rank instead (`plan_hybrid`) within learner_num_gpus; its reward actors take the
    rest of the same GPUs, each checked against its own share."""
    c, gpu = cfg.cluster, cfg.cluster.gpu_memory_gb * GB
    rollout, transients = plan_rollout(cfg, spec, train_prompts + test_prompts + 1)
    learner, learner_transients = plan_learner(cfg, spec)

    def budget(gpus: float) -> float | None:
        return gpus * gpu - GPU_RUNTIME_BYTES if gpus > 0 else None

    plans = []
    if not c.rollout_processes:  # cluster.layout=hybrid: the learner ranks sample
        terms, transients = plan_hybrid(cfg, spec, train_prompts + test_prompts + 1)
        plans.append(ActorPlan("hybrid worker", terms, budget(c.learner_num_gpus),
                               ("cluster.learner_num_gpus", "cluster.gpu_memory_gb"), transients))
    elif c.colocate_offload:
        plans.append(colocated_offload_plan(cfg, learner, learner_transients, rollout, transients, budget))
    elif c.colocate:
        per = -(-c.num_rollout_actors // c.num_learner_ranks)
        terms = [Term(f"learner: {t.label}", t.bytes, t.keys, t.host) for t in learner + learner_transients]
        terms += [Term(f"{per} rollout: {t.label}", per * t.bytes, t.keys, t.host) for t in rollout + transients]
        plans.append(ActorPlan("learner rank + colocated rollout actors", terms,
                               budget(c.learner_num_gpus + per * c.rollout_num_gpus),
                               ("cluster.colocate", "cluster.gpu_memory_gb")))
    else:
        plans.append(ActorPlan("rollout actor", rollout, budget(c.rollout_num_gpus),
                               ("cluster.rollout_num_gpus", "cluster.gpu_memory_gb"), transients))
        plans.append(ActorPlan("learner rank", learner, budget(c.learner_num_gpus),
                               ("cluster.learner_num_gpus", "cluster.gpu_memory_gb"), learner_transients))
    for i, (scorer, rspec) in enumerate(zip(cfg.rewards.scorers, reward_specs, strict=True)):
        plans.append(ActorPlan(f"reward actor {scorer.name}", plan_reward(scorer, rspec, i),
                               budget(scorer.num_gpus_per_actor),
                               (f"rewards.scorers[{i}].num_gpus_per_actor", "cluster.gpu_memory_gb")))
    return plans


def colocated_offload_plan(cfg, learner: list[Term], learner_transients: list[Term], rollout: list[Term],
                           rollout_transients: list[Term], budget) -> ActorPlan:
    """A shared bundle whose sides take turns (cluster.colocate_offload): what neither side offloads stays,
    and the two phases never overlap, so only the larger counts: training (the learner's offloadable terms
    and its largest transient) or sampling (each colocated rollout actor's weights and largest transient).
    On a GPU the offloaded bytes wait in pinned host memory; on CPU in a spill file (not counted)."""
    c = cfg.cluster
    per = -(-c.num_rollout_actors // c.num_learner_ranks)
    terms = [Term(f"learner: {t.label}", t.bytes, t.keys, t.host) for t in learner if not t.offloadable]
    terms += [Term(f"{per} rollout: {t.label}", per * t.bytes, t.keys, t.host) for t in rollout if not t.offloadable]

    def phase(label: str, side: list[Term], transients: list[Term], copies: int) -> Term:
        moved = [t for t in side if t.offloadable]
        peak = max(transients, key=lambda t: t.bytes, default=None)
        parts = moved + ([peak] if peak else [])
        keys = tuple(dict.fromkeys(k for t in parts for k in t.keys))
        return Term(f"{label}: {', '.join(t.label for t in parts)}", copies * sum(t.bytes for t in parts), keys)

    phases = [phase("while the learner trains", learner, learner_transients, 1),
              phase(f"while {per} rollout actor(s) sample", rollout, rollout_transients, per)]
    gpu = budget(c.learner_num_gpus + per * c.rollout_num_gpus)
    if gpu is not None:
        moved = sum(t.bytes for t in learner if t.offloadable) + per * sum(t.bytes for t in rollout if t.offloadable)
        terms.append(Term("offloaded tensors of both sides (pinned host memory)", moved, host=True))
    return ActorPlan("learner rank + colocated rollout actors (offloading)", terms, gpu,
                     ("cluster.colocate_offload", "cluster.gpu_memory_gb"), phases)
