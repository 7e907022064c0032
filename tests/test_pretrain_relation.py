"""scripts/pretrain_shapes.py's auxiliary relation head (--relation-weight): what it reads from a caption, and
that it trains, checkpoints and refuses a resume with the other setting."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from cluster.config import REPO_ROOT
from rewards.shapes.world import MIRROR, all_records, mirror_scene
from tests.script_loader import load_script

pytestmark = pytest.mark.unit


def test_the_stated_relation_is_read_from_the_caption_words():
    pre = load_script("scripts/pretrain_shapes.py")
    for record in all_records()["position"]:
        relation = record["include"][1]["position"][0]
        assert pre.RELATIONS[pre.stated_relation(record["prompt"])] == relation, record["prompt"]
    for caption in ("a photo of a red circle", "a photo of a circle and a square", "", "a photo of four squares"):
        assert pre.stated_relation(caption) == 0, caption


def test_the_head_trains_with_the_towers_and_a_resume_must_keep_the_setting(tmp_path):
    pre = load_script("scripts/pretrain_shapes.py")
    work = tmp_path / "work"
    common = ["--work-dir", str(work), "--out", str(tmp_path / "out"), "--init-from",
              str(REPO_ROOT / "assets" / "models" / "shapes-sd3-tiny"), "--stop-after", "0", "--batch", "4",
              "--warmup", "1", "--ckpt-every", "2", "--eval-every", "0", "--log-every", "1", "--threads", "1"]
    pre.main(["--phase", "build", "dit", "--steps", "2", "--relation-weight", "0.5", *common])
    tensors, state = pre.load_checkpoint(work / "dit_ckpt")
    assert state["step"] == 2
    assert {k for k in tensors if k.startswith("relation_head.")} == {"relation_head.linear.weight",
                                                                       "relation_head.linear.bias"}
    with pytest.raises(SystemExit, match="--relation-weight"):
        pre.main(["--phase", "dit", "--steps", "3", *common])  # the head's checkpoint, resumed without it
    pre.main(["--phase", "dit", "export", "--steps", "3", "--relation-weight", "0.5", *common])
    exported = load_file(str(tmp_path / "out" / "text_encoder" / "model.safetensors"))
    assert exported and not any("relation" in k for k in exported)
    # --export-weights raw: the optimiser's current weights in place of the EMA's
    pre.main(["--phase", "export", "--export-weights", "raw", *common[:2], "--out", str(tmp_path / "raw")])
    tensors, _ = pre.load_checkpoint(work / "dit_ckpt")
    for folder, prefix in (("out", "ema.transformer."), ("raw", "transformer.")):
        saved = load_file(str(tmp_path / folder / "transformer" / "diffusion_pytorch_model.safetensors"))
        assert all(pre.torch.equal(v, tensors[prefix + k]) for k, v in saved.items()), folder
    assert any(not pre.torch.equal(tensors["transformer." + k], tensors["ema.transformer." + k]) for k in saved)


def test_a_mirror_pair_differs_only_in_the_relation_word_and_the_places_on_its_axis():
    from rewards.geneval_rules import relative_position

    pre = load_script("scripts/pretrain_shapes.py")
    records = all_records()
    captions, x = pre.draw_mirror_pairs(records, pre.np.random.default_rng(0), 12)
    assert len(captions) == 24 and x.shape[0] == 24
    for first, second in zip(captions[0::2], captions[1::2], strict=True):
        relation = pre.RELATIONS[pre.stated_relation(first)]
        assert second == first.replace(relation, MIRROR[relation])
    for record in records["position"][:40]:
        relation = record["include"][1]["position"][0]
        scene = pre.sample_scene(record, pre.np.random.default_rng(1), 32)
        target, subject = mirror_scene(scene, relation).objects
        assert MIRROR[relation] in relative_position(subject.box, target.box)
        assert relation not in relative_position(subject.box, target.box)
        still = "y" if relation in ("left of", "right of") else "x"  # the other axis is untouched
        assert [getattr(o, still) for o in (target, subject)] == [getattr(o, still) for o in scene.objects]


def test_tied_pairs_share_noise_and_sigma_and_leave_the_other_rows_alone():
    pre = load_script("scripts/pretrain_shapes.py")
    eps, sigma = pre.torch.randn(7, 2, 3, 3), pre.torch.rand(7)
    tied_eps, tied_sigma = pre.tie_pairs(eps, sigma, 2)  # rows 3-4 and 5-6 are pairs
    assert pre.torch.equal(tied_eps[:4], eps[:4]) and pre.torch.equal(tied_sigma[:4], sigma[:4])
    assert pre.torch.equal(tied_eps[4], eps[3]) and pre.torch.equal(tied_eps[6], eps[5])
    assert tied_sigma[4] == sigma[3] and tied_sigma[6] == sigma[5]
    assert not pre.torch.equal(eps[4], eps[3])  # the input was untouched
