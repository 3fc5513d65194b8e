"""Prismatic's prompt: the Vicuna v1.5 builder with the release's system prompt."""

from __future__ import annotations

SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
PAPER_MESSAGE = "Describe this image."


def vicuna_v15_prompt(message: str, system_prompt: str = SYSTEM_PROMPT) -> str:
    """Prismatic's VicunaV15ChatPromptBuilder, first human turn, as `get_prompt()` returns it."""
    message = message.replace("<image>", "").strip()
    return (system_prompt.strip() + " " + f"USER: {message} ASSISTANT: ").rstrip()
