"""Publishing from training libraries: `ckptserve.integrations.sb3` for Stable-Baselines3.

Each integration imports its library when it is imported itself, never from `import ckptserve`.
"""
