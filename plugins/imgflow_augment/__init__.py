"""imgflow's augmentation stages (placeholder while being built)."""
