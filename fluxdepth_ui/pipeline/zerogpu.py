"""ZeroGPU Spaces: the transformer compiled ahead of time at start-up with the `spaces` package's AoT helpers.

On ZeroGPU every request runs in a fresh GPU process, so torch.compile would compile again each time. The `spaces`
helpers compile once, inside one long GPU call at start-up (`aoti_capture` records the transformer's inputs,
`torch.export` traces it, `aoti_compile` builds it, `aoti_apply` puts it in place and frees the eager weights), and
every request gets the compiled transformer (docs/fast-tier.md). The whole transformer is exported with its image and
text token counts dynamic, so every size and prompt length the studio allows runs compiled. The fp8 tier quantizes
inside that call, just before the export, as the helpers expect.
"""

from __future__ import annotations

import torch

from ..depth.control import DEFAULT_LONG_SIDE, MAX_LONG_SIDE, MULTIPLE
from ..settings import MAX_SEQUENCE_LENGTH

# Start-up may hold the GPU this long (the longest call ZeroGPU grants at start-up).
STARTUP_GPU_SECONDS = 1500
# Token counts the compiled transformer takes: a 16-px latent patch per token, up to the longest side squared; the
# text runs from 2 tokens (export specializes 0 and 1) to the longest T5 sequence a shot may ask for.
IMAGE_TOKENS = (16, (MAX_LONG_SIDE // MULTIPLE) ** 2)
TEXT_TOKENS = (2, MAX_SEQUENCE_LENGTH)


def dynamic_shapes(kwargs: dict) -> dict:
    """The transformer's inputs with their token dimensions marked dynamic, everything else static."""
    from torch.utils._pytree import tree_map

    image = torch.export.Dim("image_tokens", min=IMAGE_TOKENS[0], max=IMAGE_TOKENS[1])
    text = torch.export.Dim("text_tokens", min=TEXT_TOKENS[0], max=TEXT_TOKENS[1])
    shapes = tree_map(lambda value: None, kwargs)
    shapes.update(hidden_states={1: image}, img_ids={0: image}, encoder_hidden_states={1: text}, txt_ids={0: text})
    return shapes


def capture_and_compile(pipe, spaces, max_sequence_length: int):
    """Inside the start-up GPU call: one transformer call at the default size is recorded (not run to the end), then
    exported and compiled. Returns what `spaces.aoti_apply` takes."""
    side = DEFAULT_LONG_SIDE
    device = pipe._execution_device
    with torch.no_grad():
        embeds, pooled, _ = pipe.encode_prompt(prompt="a depth-guided image", prompt_2=None, device=device,
                                               max_sequence_length=max_sequence_length)
        with spaces.aoti_capture(pipe.transformer) as call:
            pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, control_image=torch.zeros(1, 3, side, side),
                 height=side, width=side, num_inference_steps=1, max_sequence_length=max_sequence_length,
                 output_type="latent")
    exported = torch.export.export(pipe.transformer, args=call.args, kwargs=call.kwargs,
                                   dynamic_shapes=dynamic_shapes(call.kwargs))
    return spaces.aoti_compile(exported)
