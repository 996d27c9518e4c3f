"""The Gradio web app: sign-in, chat, thumbs, A/B choices, the operator dashboard.

It calls only the `Assistant` facade (no SQL, no torch, no model code here).
"""
