"""Runtimes drive one agent turn each: `claude` (the Claude Code CLI) and `scripted` (rules)."""
