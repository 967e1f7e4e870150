"""The demo corpus: teacher voices from offline synthesisers, the project's own prompts, avatars."""
