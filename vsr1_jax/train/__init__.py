"""Training: Stage-1 SFT (LM loss + 0.3 x InfoNCE on the refined query) and Stage-2 GRPO, as jitted functional
updates over a device mesh with orbax checkpoints (train/loop.py runs either)."""
