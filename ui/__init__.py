"""The Gradio app (arrives with the UI issue); it will call only the `Assistant` facade."""
