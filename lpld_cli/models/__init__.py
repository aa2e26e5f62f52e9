"""Networks, teachers, losses, class-wise BN statistics and the model registry (`zoo`).

Imports nothing itself: `models.zoo` and `models.recover_methods` stay torch-free for
`--help` and cached commands.
"""
