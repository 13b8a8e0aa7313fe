"""deepseek: a self-hostable DeepSeek-V3.2 system.

The model lives in `deepseek.model` (needs the `serve` extra: torch). This top-level module stays
light: importing `deepseek` never imports torch.
"""

__version__ = "0.1.0"
