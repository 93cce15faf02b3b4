"""FluxDepth Studio: depth passes from Houdini (and other DCCs) + a prompt -> FLUX.1-Depth-dev images."""

__version__ = "0.1.0"
