"""Gradio UI: the only package that imports gradio. Handlers are thin calls into depth/ and pipeline/."""
