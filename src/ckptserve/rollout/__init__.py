"""Safe rollout for a policy that is still learning (see docs/rollout.md)."""
