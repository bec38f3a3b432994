"""mixbench harness: the protocol that trains, evaluates and records every mixer alike."""
