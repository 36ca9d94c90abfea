"""Reasoning distillation: traces from a teacher (generate or import), verified and filtered, then SFT."""
