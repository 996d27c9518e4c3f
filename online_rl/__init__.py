"""Online RLHF per user: reward heads, PPO on LoRA adapters, the gate, the scheduler.

Landed so far: `online_rl.reward` (features from the frozen base, population head + per-user
residual, Bradley-Terry and thumbs losses, held-out accuracy). PPO, the gate, rounds and the
scheduler follow; until then `Assistant.train` says so and raises.
"""
