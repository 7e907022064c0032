"""scripts/pretrain_shapes.py's auxiliary relation head (--relation-weight): what it reads from a caption, and
that it trains, checkpoints and refuses a resume with the other setting."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from cluster.config import REPO_ROOT
from rewards.shapes.world import all_records
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
