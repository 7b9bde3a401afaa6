"""A LoRA's family from its tensor names (loras.lora_family), for the key styles of the
FLUX.1 and SD 3.x LoRAs people download: diffusers / PEFT, kohya and XLabs."""

from __future__ import annotations

import pytest

from alice_spool.library.loras import lora_family


def header(*keys: str) -> dict[str, object]:
    return {key: {"dtype": "F16", "shape": [4, 64], "data_offsets": [0, 512]} for key in keys}


@pytest.mark.parametrize(
    ("keys", "family"),
    [
        (  # diffusers / PEFT, FLUX.1: single-stream blocks
            ("transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight",
             "transformer.transformer_blocks.0.attn.to_k.lora_B.weight"),
            "flux",
        ),
        (  # diffusers / PEFT, SD 3.x: joint blocks only
            ("transformer.transformer_blocks.0.attn.to_q.lora_A.weight",
             "transformer.transformer_blocks.0.attn.add_k_proj.lora_A.weight"),
            "sd3",
        ),
        (("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",), "flux"),  # kohya
        (("lora_unet_single_blocks_3_linear1.lora_down.weight",), "flux"),  # kohya
        (("double_blocks.0.processor.qkv_lora1.down.weight",
          "double_blocks.0.processor.qkv_lora1.up.weight"), "flux"),  # XLabs
        (("lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight",), "sd3"),  # kohya
        (("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight",),
         "sd1"),  # an SD LoRA stays SD
        (("transformer.single_transformer_blocks.0.attn.to_q.weight",), None),  # no LoRA
    ],
)  # fmt: skip
def test_the_family_follows_from_the_tensor_names(keys: tuple[str, ...], family: str) -> None:
    assert lora_family(header(*keys)) == family
