"""lvm-zoo inference: how we fit (SVI, EM, closed form) and how we judge (one yardstick)."""
