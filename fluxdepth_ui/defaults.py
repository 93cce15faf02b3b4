"""Defaults every front end shows before anything heavy is imported (no torch here: `fluxdepth preview` and the
argument parsers must start fast). The pipeline package takes its values from this module."""

DEFAULT_MODEL = "black-forest-labs/FLUX.1-Depth-dev"
DEFAULT_STEPS = 28  # the model's own practice: 28-30 steps
DEFAULT_GUIDANCE = 10.0  # FLUX.1-Depth-dev wants 10; diffusers' __call__ default of 3.5 is for FLUX.1-dev
DEFAULT_STRENGTH = 0.6  # img2img
DEFAULT_INPAINT_STRENGTH = 0.9  # fixing one region: diffusers' FluxControlInpaintPipeline depth example uses 0.9
PLACEMENTS = ("auto", "gpu", "model_offload", "sequential_offload")
# GiB of the card that placement auto leaves to other programs (Houdini's viewport, Karma XPU): docs/vram.md.
DEFAULT_VRAM_HEADROOM_GIB = 1.5
# Placement auto without a --vram-budget plans by the card's free memory before every image ("follow"): measured on
# an H100 made into 8-24 GiB cards by another process (docs/vram.md, docs/benchmarks.md "Session 33").
FOLLOW_FREE_MEMORY_BY_DEFAULT = True
# The app's live preview, every N denoising steps: at 4 it cost 2.4 % of a 28-step bf16 image on an H100, at 1 12.4 %
# (docs/live-preview.md, docs/benchmarks.md "Session 34").
DEFAULT_LIVE_PREVIEW_EVERY = 4
VARIANT_NAMES = ("bf16", "qint8", "qint4", "fp8")  # the tiers, in the order the app lists them
DEFAULT_VARIANT = VARIANT_NAMES[0]
DEFAULT_DEPTH_LORA_SCALE = 0.85  # black-forest-labs/flux cli_control.py's scale for the depth LoRA
DEFAULT_FPS = 24.0  # sequence videos
STYLE_LORA_SLOTS = 2  # style LoRA rows in the app (settings.MAX_STYLE_LORAS bounds the API and the CLI)
# The app's form keys of those rows: (name, scale) per slot.
LORA_SLOTS = tuple((f"lora_{i}", f"lora_{i}_scale") for i in range(1, STYLE_LORA_SLOTS + 1))
# Files written beside the 8-bit PNG, from the VAE's float decode (docs/outputs.md).
EXTRA_FORMATS = {"png16": "16-bit PNG (sRGB)", "exr": "half-float EXR (linear Rec.709)"}
