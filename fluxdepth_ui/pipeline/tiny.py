"""`tiny-random`: a FLUX.1-Depth-dev-shaped pipeline with random weights, built in memory in well under a second.

It runs the real diffusers `FluxControlPipeline` code path (channel-concatenated control latents, guidance embedding,
both text encoders) with no download. It produces noise: it exists for tests and for trying the app without the
30+ GB model. Shapes are FLUX's own at a small width ("flux" shape: in 128, out 64, 16 latent channels).
"""

from __future__ import annotations

import torch

TINY_NOTICE = "tiny-random: random weights for testing, produces noise, not pictures"


def tiny_tokenizers():
    """CLIP and T5 tokenizers built in memory (byte-level BPE with no merges; Unigram over printable ASCII)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer, T5Tokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for ch in alphabet:
            vocab[ch + suffix] = len(vocab)
    # model_max_length is required: padding to max_length overflows without it.
    clip = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    chars = [chr(i) for i in range(33, 127)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + c, -3.0) for c in chars] + [(c, -4.0) for c in chars]
    t5 = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)
    return clip, t5


def tiny_transformer_config() -> dict:
    return dict(
        patch_size=1, in_channels=128, out_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=[4, 4, 8],
    )


def build_tiny_components(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**tiny_transformer_config())
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=(8, 8, 8, 8), latent_channels=16,
        norm_num_groups=4, layers_per_block=1, shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False,
        use_post_quant_conv=False,
        # VAE tiling works in tiles of this size: diffusers' default of 32 px made a tiled 1024 px decode 1,400
        # tiles (over a minute on the CPU); FLUX's own VAE tiles by 1024.
        sample_size=256,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="gelu",
        projection_dim=32, layer_norm_eps=1e-5,
    ))
    torch.manual_seed(seed + 3)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=256, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        dropout_rate=0.0, feed_forward_proj="gated-gelu", is_encoder_decoder=False, pad_token_id=0, eos_token_id=1,
    ))
    tokenizer, tokenizer_2 = tiny_tokenizers()
    components = dict(
        transformer=transformer, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=FlowMatchEulerDiscreteScheduler(),
    )
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        module = components[name].eval()
        components[name] = module if dtype == torch.float32 else module.to(dtype)
    return components


def build_tiny_depth_estimator():
    """A random-weight Depth Anything of a few thousand parameters and its processor: what the tiny-random studio
    estimates photo depth with (tests, demos), instead of fetching Depth Anything large."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    from .depth_estimation import DepthEstimator

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
                            patch_size=14, image_size=56, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, patch_size=14,
                                 neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8)
    processor = DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                                  image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return DepthEstimator.from_components(DepthAnythingForDepthEstimation(config), processor, "tiny-depth-anything")
