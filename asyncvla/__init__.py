"""asyncvla: fully asynchronous RL fine-tuning of Vision-Language-Action policies."""

__version__ = "0.1.0"
