"""What the fork is and does: its cache types, its block formats, what it does to K/V per layer."""
