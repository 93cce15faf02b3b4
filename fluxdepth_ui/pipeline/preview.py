"""Live preview: the latents of a denoising step decoded by FLUX's tiny autoencoder (TAEF1), docs/live-preview.md.

The decode is exactly the pipeline's own final decode with the tiny autoencoder in place of the VAE (diffusers'
FluxControlPipeline `__call__`, after its loop): unpack the latents, undo the scaling with the decoder's own
`scaling_factor` / `shift_factor`, decode, post-process. So the preview at the last step is the image a pipeline built
with `vae=AutoencoderTiny(TAEF1)` returns (tests/test_live_preview.py).
"""

from __future__ import annotations

import logging

import torch
from PIL import Image

log = logging.getLogger(__name__)

TAEF1 = "madebyollin/taef1"  # 2.4M parameters: a few MB, decodes 1024x1024 in milliseconds on a GPU


def load_preview_decoder(source_kind: str, vae_config, device: torch.device, dtype: torch.dtype):
    """(the tiny autoencoder on `device`, None) or (None, one line why the preview is off).

    TAEF1 comes like the model: from the Hugging Face cache, fetched once when the hub can be reached. Offline and
    not cached, the preview is off with a note (the step bar stays), never an error. tiny-random (tests) builds a
    random one in-process shaped like the tiny model's VAE latents."""
    from diffusers import AutoencoderTiny

    if source_kind == "tiny":
        torch.manual_seed(0)
        decoder = AutoencoderTiny(latent_channels=vae_config.latent_channels, encoder_block_out_channels=(8, 8, 8, 8),
                                  decoder_block_out_channels=(8, 8, 8, 8), num_encoder_blocks=(1, 1, 1, 1),
                                  num_decoder_blocks=(1, 1, 1, 1), scaling_factor=vae_config.scaling_factor,
                                  shift_factor=vae_config.shift_factor or 0.0)
        decoder = decoder.to(device) if dtype == torch.float32 else decoder.to(device=device, dtype=dtype)
        return decoder.eval(), None
    from .sources import from_cache_or_hub

    try:
        decoder = from_cache_or_hub(lambda local_only: AutoencoderTiny.from_pretrained(
            TAEF1, torch_dtype=dtype, local_files_only=local_only))
        return decoder.to(device).eval(), None
    except Exception as exc:  # noqa: BLE001 - any failure only turns the preview off
        log.info("TAEF1 is not cached and could not be fetched: %s", exc)
    return None, (f"live preview off: the tiny autoencoder ({TAEF1}) is not cached and cannot be fetched now (once "
                  f"online: hf download {TAEF1}); the step bar shows progress instead")


def decode_preview(pipe, decoder, latents: torch.Tensor, height: int, width: int) -> Image.Image:
    """One step's packed latents as a PIL image, through the tiny autoencoder (the pipeline's decode, docs above)."""
    with torch.no_grad():
        unpacked = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        unpacked = unpacked.to(device=decoder.device, dtype=decoder.dtype)
        unpacked = unpacked / decoder.config.scaling_factor + decoder.config.shift_factor
        image = decoder.decode(unpacked, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")[0]
