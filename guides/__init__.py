"""lvm-zoo guides: q(z | x), what we believe about the latents given the data."""
