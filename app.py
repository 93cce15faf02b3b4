"""FluxDepth Studio: `python app.py` starts the Gradio app."""

from fluxdepth_ui.ui.launch import main

if __name__ == "__main__":
    main()
